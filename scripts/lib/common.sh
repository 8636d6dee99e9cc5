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

# Installs PostgreSQL's server (initdb, pg_ctl) when missing: Debian keeps them under
# /usr/lib/postgresql/VERSION/bin, off the PATH.
ensure_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing postgresql (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
}

# Makes a Python virtual environment at $1 holding the products' official SDKs that
# tests/sdk/ drives (versions pinned in tests/sdk/requirements.txt), from PyPI; kept between
# runs and installed again only when the pins change. Debian's python3 needs python3-venv.
ensure_sdk_venv() {
  local venv=$1 pins=tests/sdk/requirements.txt
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing python3-venv (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  if [ -f "$venv/pins.txt" ] && cmp -s "$venv/pins.txt" "$pins"; then
    return 0
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$pins"
  cp "$pins" "$venv/pins.txt"
}
