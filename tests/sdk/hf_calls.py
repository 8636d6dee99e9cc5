#!/usr/bin/env python3
"""Drive the official Hugging Face client through an auditgate proxy.

    python3 hf_calls.py PROXY_URL        e.g. http://127.0.0.1:8080

Uses huggingface_hub as published on PyPI (written against 2.4.0, the latest release when
written; `pip install huggingface_hub`). The proxy must forward to a fake Hub that answers
the routes of hf-upstream.md (the research note beside the rules); no real Hub is contacted.

Every call goes to `PROXY_URL` with `Authorization: Bearer hf_...` (HfApi's `token=`) and
`X-User-Id` (HfApi's `headers=`, merged into every request by build_hf_headers). The client
adds `user-agent` and its own `X-Amzn-Trace-Id` (a uuid4) to each request; it sends no
X-Request-Id, so the proxy mints one per call.

For each call the script prints, once the call has succeeded, one JSON line for the request
the proxy should record:
    {"operation": "repo.add_secret", "tenant": "acme", "method": "POST", "path": "/api/spaces/acme/chatbot/secrets"}
Any error (an HTTP error the client raises, a response it cannot parse) ends the script with
a non-zero exit status and the traceback on stderr.

Requests that are not audited but that the fake must still answer:
  * none of the calls below makes a GET of its own as written: create_repo and duplicate_repo
    get a full "org/name" id and no space_template, create_collection gets its namespace. Left
    to defaults they would first GET /api/whoami-v2 (duplicate_repo without a namespace in
    to_id, create_collection without namespace=), GET /api/spaces/templates (create_repo with
    space_template=) or GET /api/{type}s/{id} (create_repo(exist_ok=True) answered 401/402/403);
    add_collection_item(exists_ok=True) answered 409 GETs the collection.
  * the proxy itself GETs, before forwarding (the rules' `before:`): /api/spaces/acme/chatbot
    before update_repo_settings, /api/spaces/acme/chatbot/runtime before request_space_hardware
    and set_space_sleep_time, /api/collections/<slug> before update_collection_metadata. A
    failed GET only leaves the record's `before` values out (capture.before: failed).
"""

import json
import sys

import huggingface_hub
from huggingface_hub import HfApi, SpaceHardware

ORG = "acme"
USER = "alice"
TOKEN = "hf_auditgateSdkTestToken000000000000"  # fake: the fake Hub accepts any token
SPACE = f"{ORG}/chatbot"
COPY = f"{ORG}/chatbot-copy"
MOVED = f"{ORG}/chatbot-staging"
RESOURCE_GROUP = "66980ecfc1e12a49c8f0e42d"



def audited(operation: str, method: str, path: str, tenant: str | None = ORG) -> None:
    print(json.dumps({"operation": operation, "tenant": tenant, "method": method, "path": path}), flush=True)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    endpoint = sys.argv[1].rstrip("/")
    api = HfApi(
        endpoint=endpoint,
        token=TOKEN,
        library_name="auditgate-sdk-test",
        library_version="1",
        headers={"X-User-Id": USER},
    )
    print(f"huggingface_hub {huggingface_hub.__version__} -> {endpoint}", file=sys.stderr)

    # --- repository --------------------------------------------------------------------
    url = api.create_repo(SPACE, repo_type="space", space_sdk="gradio", private=True)
    if url.repo_id != SPACE or url.repo_type != "space":
        raise RuntimeError(f"create_repo answered {url!r}")
    audited("repo.create", "POST", "/api/repos/create")

    api.update_repo_settings(SPACE, repo_type="space", visibility="public")
    audited("repo.update_settings", "PUT", f"/api/spaces/{SPACE}/settings")

    # --- Space settings ----------------------------------------------------------------
    api.add_space_secret(SPACE, "OPENAI_KEY", "sk-123", description="prod")
    audited("repo.add_secret", "POST", f"/api/spaces/{SPACE}/secrets")

    api.delete_space_secret(SPACE, "OPENAI_KEY")
    audited("repo.remove_secret", "DELETE", f"/api/spaces/{SPACE}/secrets")

    variables = api.add_space_variable(SPACE, "MODEL_NAME", "gpt2", description="which model")
    if variables["MODEL_NAME"].value != "gpt2":
        raise RuntimeError(f"add_space_variable answered {variables!r}")
    audited("repo.add_variable", "POST", f"/api/spaces/{SPACE}/variables")

    api.delete_space_variable(SPACE, "MODEL_NAME")
    audited("repo.remove_variable", "DELETE", f"/api/spaces/{SPACE}/variables")

    runtime = api.request_space_hardware(SPACE, SpaceHardware.T4_SMALL)
    if runtime.requested_hardware != "t4-small":
        raise RuntimeError(f"request_space_hardware answered {runtime.raw!r}")
    audited("spaces.update_hardware", "POST", f"/api/spaces/{SPACE}/hardware")

    api.set_space_sleep_time(SPACE, 3600)
    audited("spaces.update_sleep_time", "POST", f"/api/spaces/{SPACE}/sleeptime")

    # Reads (not audited): the Space, its runtime, its variables, the org's Spaces.
    if api.space_info(SPACE).id != SPACE:
        raise RuntimeError("space_info answered another id")
    if api.get_space_runtime(SPACE).requested_hardware != "t4-small":
        raise RuntimeError("get_space_runtime does not show the hardware asked for")
    api.get_space_variables(SPACE)
    if SPACE not in [s.id for s in api.list_spaces(author=ORG)]:
        raise RuntimeError("list_spaces does not list the Space made")

    # Persistent storage: request_space_storage / delete_space_storage in huggingface_hub
    # 1.x, removed in 2.0 for mounted volumes.
    if hasattr(api, "request_space_storage"):
        from huggingface_hub import SpaceStorage

        api.request_space_storage(SPACE, SpaceStorage.SMALL)
        audited("spaces.add_storage", "POST", f"/api/spaces/{SPACE}/storage")
        api.delete_space_storage(SPACE)
        audited("spaces.remove_storage", "DELETE", f"/api/spaces/{SPACE}/storage")
    else:
        from huggingface_hub import Volume

        api.set_space_volumes(SPACE, [Volume(type="bucket", source=f"{ORG}/data", mount_path="/data")])
        audited("spaces.update_volumes", "PUT", f"/api/spaces/{SPACE}/volumes")
        api.delete_space_volumes(SPACE)
        audited("spaces.remove_volumes", "DELETE", f"/api/spaces/{SPACE}/volumes")

    # --- duplicate, move, delete ------------------------------------------------------
    if hasattr(api, "duplicate_repo"):
        copy = api.duplicate_repo(SPACE, COPY, repo_type="space", private=True)
    else:  # huggingface_hub < 1.x
        copy = api.duplicate_space(SPACE, COPY, private=True)
    if copy.repo_id != COPY:
        raise RuntimeError(f"duplicate answered {copy!r}")
    audited("repo.duplication", "POST", f"/api/spaces/{SPACE}/duplicate")

    api.move_repo(COPY, MOVED, repo_type="space")
    audited("repo.move", "POST", "/api/repos/move")

    api.delete_repo(MOVED, repo_type="space")
    audited("repo.delete", "DELETE", "/api/repos/delete")

    # --- collections ------------------------------------------------------------------
    collection = api.create_collection("Favourites", namespace=ORG, description="Our best")
    slug = collection.slug
    if not slug.startswith(f"{ORG}/"):
        raise RuntimeError(f"create_collection answered slug {slug!r}")
    audited("collection.create", "POST", "/api/collections")

    # Reads (not audited: GETs): the library parses what the example API answers.
    if api.get_collection(slug).title != "Favourites":
        raise RuntimeError("get_collection answered another title")
    if slug not in [c.slug for c in api.list_collections(owner=ORG)]:
        raise RuntimeError("list_collections does not list the collection made")

    collection = api.update_collection_metadata(slug, title="Top picks", private=True)
    audited("collection.update", "PATCH", f"/api/collections/{slug}")

    collection = api.add_collection_item(slug, SPACE, "space", note="our chatbot")
    item = next((i for i in collection.items if i.item_id == SPACE), None)
    if item is None:
        raise RuntimeError(f"add_collection_item answered items {collection.items!r}")
    audited("collection.add_item", "POST", f"/api/collections/{slug}/items")

    api.update_collection_item(slug, item.item_object_id, note="our best chatbot", position=0)
    audited("collection.update_item", "PATCH", f"/api/collections/{slug}/items/{item.item_object_id}")

    # The only resource-group assignment huggingface_hub 2.4.0 has (repos get theirs at
    # creation, through resource_group_id=).
    api.update_collection_resource_group(slug, RESOURCE_GROUP)
    audited("collection.update_resource_group", "POST", f"/api/collections/{slug}/resource-group")

    api.delete_collection_item(slug, item.item_object_id)
    audited("collection.remove_item", "DELETE", f"/api/collections/{slug}/items/{item.item_object_id}")

    api.delete_collection(slug)
    audited("collection.delete", "DELETE", f"/api/collections/{slug}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
