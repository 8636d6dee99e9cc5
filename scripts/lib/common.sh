# Shared by scripts/test, scripts/demo and scripts/bench: find the workspace, install the
# system packages a script needs when they are missing.

# Installs each named Debian package whose command is missing. Arguments are "command:package"
# pairs, e.g. "cmake:cmake" "redis-server:redis-server".
ensure_packages() {
  local missing=()
  local pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Installs the toolchain components the checks use when rustup can add them.
ensure_rust_components() {
  for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
      rustup component add "$comp"
    fi
  done
}
