#!/usr/bin/env python3
"""Drive ImageKit's official Python SDK through an auditgate proxy.

    python3 -m pip install imagekitio==5.11.0     # the latest on PyPI when this was written
    python3 tests/sdk/imagekit_calls.py http://127.0.0.1:8080

The client is built with `base_url=PROXY_URL`. Once the base URL is overridden the SDK sends
uploads to PROXY_URL + /api/v1/files/upload too, instead of https://upload.imagekit.io
(imagekitio/resources/files/files.py, FilesResource.upload: `"/api/v1/files/upload" if
self._client._base_url_overridden else "https://upload.imagekit.io/api/v1/files/upload"`), so
one proxy sees every call; it routes /api/... to upload.imagekit.io and the rest to
api.imagekit.io. X-User-Id and X-Org-Id, which a deployment's authenticating front would set,
go with every call through `default_headers`.

Each call the script makes prints one JSON line on stdout: what the audit store should then
hold for it (`operation`, `tenant`, `method`, `path`), in call order. Any SDK error (an HTTP
status >= 400, a connection failure, a timeout) ends the script with exit 1 and the error on
stderr. Retries are off (`max_retries=0`): the SDK would otherwise repeat a call answered 408,
409, 429 or 5xx, or whose connection failed, and a repeated call is a second record.

The ids used are the ones the upstream returns (the uploaded file's fileId and versionInfo.id,
the custom metadata field's id), so the script works against ImageKit itself (with a real
private key in IMAGEKIT_PRIVATE_KEY and a proxy in front of it) or against a fake upstream
(what it must answer: examples/upstream/imagekit.rs).
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import imagekitio
from imagekitio import ImageKit

USER = "alice"
TENANT = "acme"

# A 1x1 transparent PNG: the bytes of the uploaded file.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000005000155ab1f650000000049454e44ae426082"
)


def emit(operation: str, method: str, path: str) -> None:
    print(
        json.dumps({"operation": operation, "tenant": TENANT, "method": method, "path": path}),
        flush=True,
    )


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} PROXY_URL", file=sys.stderr)
        return 2
    proxy = sys.argv[1].rstrip("/")
    client = ImageKit(
        # Basic auth: the SDK sends `Authorization: Basic base64(private_key + ":" + password)`,
        # the password being "do_not_set" unless OPTIONAL_IMAGEKIT_IGNORES_THIS says otherwise.
        private_key=os.environ.get("IMAGEKIT_PRIVATE_KEY", "private_auditgate_test_key"),
        base_url=proxy,
        max_retries=0,
        timeout=30.0,
        default_headers={"X-User-Id": USER, "X-Org-Id": TENANT},
    )
    # A folder of its own per run, so that runs against ImageKit itself do not collide.
    run = "/auditgate-" + uuid.uuid4().hex[:8]

    # --- custom metadata field (a file's customMetadata needs its field first) --------------
    field = client.custom_metadata_fields.create(
        name="brand",
        label="Brand",
        schema={"type": "Text", "max_length": 100},
    )
    emit("metadata_field.create", "POST", "/v1/customMetadataFields")

    # --- folders -----------------------------------------------------------------------------
    client.folders.create(folder_name=run.lstrip("/"), parent_folder_path="/")
    emit("folder.create", "POST", "/v1/folder")
    client.folders.create(folder_name="forest", parent_folder_path=f"{run}/")
    emit("folder.create", "POST", "/v1/folder")

    # --- uploads: a new file, a new version of it, a draft -------------------------------------
    first = client.files.upload(
        file=("tree.png", PNG, "image/png"),
        file_name="tree.png",
        folder=f"{run}/forest",
        use_unique_file_name=False,
        tags=["nature"],
        custom_metadata={"brand": "acme"},
    )
    emit("asset.upload", "POST", "/api/v1/files/upload")
    file_id = first.file_id
    first_version = first.version_info.id if first.version_info else None
    if not file_id or not first_version:
        raise SystemExit(f"upload answered no fileId / versionInfo.id: {first.to_json()}")

    # The same path again with overwriteFile: a new version of the same file.
    second = client.files.upload(
        file=("tree.png", PNG, "image/png"),
        file_name="tree.png",
        folder=f"{run}/forest",
        use_unique_file_name=False,
        overwrite_file=True,
    )
    emit("asset.upload", "POST", "/api/v1/files/upload")
    second_version = second.version_info.id if second.version_info else None
    if not second_version:
        raise SystemExit(f"upload answered no versionInfo.id: {second.to_json()}")

    # Reads (not audited: GETs): the SDK parses what the example API answers.
    if client.files.get(file_id).file_path != f"{run}/forest/tree.png":
        raise SystemExit("files.get answered another path")
    if not any(a.file_id == file_id for a in client.assets.list() if getattr(a, "file_id", None)):
        raise SystemExit("assets.list does not list the uploaded file")
    if not any(f.id == field.id for f in client.custom_metadata_fields.list()):
        raise SystemExit("custom_metadata_fields.list does not list the field made")

    # A draft asset (unpublished), through the V2 upload API.
    draft = client.beta.v2.files.upload(
        file=("draft.png", PNG, "image/png"),
        file_name="draft.png",
        folder=f"{run}/forest",
        is_published=False,
    )
    emit("asset.upload", "POST", "/api/v2/files/upload")
    draft_id = draft.file_id
    if not draft_id:
        raise SystemExit(f"upload answered no fileId: {draft.to_json()}")

    # --- PATCH /v1/files/{fileId}/details, one kind per call ---------------------------------
    details = f"/v1/files/{file_id}/details"
    client.files.update(file_id, custom_metadata={"brand": "acme-outdoor"})
    emit("metadata.update", "PATCH", details)
    client.files.update(file_id, tags=["forest", "tree"])
    emit("tag.update", "PATCH", details)
    client.files.update(file_id, remove_ai_tags=["plant"])
    emit("tag.remove_ai", "PATCH", details)
    client.files.update(
        file_id,
        extensions=[
            {"name": "remove-bg", "options": {"add_shadow": True}},
            {"name": "google-auto-tagging", "min_confidence": 80, "max_tags": 10},
        ],
        webhook_url="https://example.com/imagekit-webhook",
    )
    emit("extension.apply", "PATCH", details)
    client.files.update(file_id, description="An oak in the forest")
    emit("asset.update", "PATCH", details)
    client.files.update(draft_id, publish={"is_published": True, "include_file_versions": True})
    emit("draft.update", "PATCH", f"/v1/files/{draft_id}/details")

    # --- bulk tags -----------------------------------------------------------------------------
    client.files.bulk.add_tags(file_ids=[file_id, draft_id], tags=["summer", "sale"])
    emit("tag.add", "POST", "/v1/files/addTags")
    client.files.bulk.remove_tags(file_ids=[file_id, draft_id], tags=["sale"])
    emit("tag.remove", "POST", "/v1/files/removeTags")
    client.files.bulk.remove_ai_tags(file_ids=[file_id], ai_tags=["tree"])
    emit("tag.remove_ai", "POST", "/v1/files/removeAITags")

    # --- versions: back to the first, then drop the second ------------------------------------
    client.files.versions.restore(first_version, file_id=file_id)
    emit("version.restore", "PUT", f"/v1/files/{file_id}/versions/{first_version}/restore")
    client.files.versions.delete(second_version, file_id=file_id)
    emit("version.delete", "DELETE", f"/v1/files/{file_id}/versions/{second_version}")

    # --- rename, copy, move ----------------------------------------------------------------------
    client.files.rename(file_path=f"{run}/forest/tree.png", new_file_name="oak.png", purge_cache=True)
    emit("asset.rename", "PUT", "/v1/files/rename")
    client.files.copy(
        source_file_path=f"{run}/forest/oak.png",
        destination_path=f"{run}/archive/",
        include_file_versions=True,
    )
    emit("asset.copy", "POST", "/v1/files/copy")
    client.files.move(source_file_path=f"{run}/forest/oak.png", destination_path=f"{run}/park/")
    emit("asset.move", "POST", "/v1/files/move")

    # --- cache ---------------------------------------------------------------------------------
    client.cache.invalidation.create(url=f"https://ik.imagekit.io/demo{run}/park/oak.png")
    emit("asset.purge_cache", "POST", "/v1/files/purge")

    # --- custom metadata field update ---------------------------------------------------------
    client.custom_metadata_fields.update(field.id, label="Brand name")
    emit("metadata_field.update", "PATCH", f"/v1/customMetadataFields/{field.id}")

    # --- folder jobs ---------------------------------------------------------------------------
    client.folders.copy(
        source_folder_path=f"{run}/park/",
        destination_path=f"{run}/backup/",
        include_versions=True,
    )
    emit("folder.copy", "POST", "/v1/bulkJobs/copyFolder")
    client.folders.move(source_folder_path=f"{run}/backup/", destination_path=f"{run}/archive/")
    emit("folder.move", "POST", "/v1/bulkJobs/moveFolder")
    client.folders.rename(folder_path=f"{run}/archive/", new_folder_name="attic", purge_cache=False)
    emit("folder.rename", "POST", "/v1/bulkJobs/renameFolder")

    # --- deletes -------------------------------------------------------------------------------
    client.files.delete(file_id)
    emit("asset.delete", "DELETE", f"/v1/files/{file_id}")
    client.files.bulk.delete(file_ids=[draft_id])
    emit("asset.bulk_delete", "POST", "/v1/files/batch/deleteByFileIds")
    client.folders.delete(folder_path=f"{run}/forest/")
    emit("folder.delete", "DELETE", "/v1/folder")
    client.folders.delete(folder_path=f"{run}/")
    emit("folder.delete", "DELETE", "/v1/folder")
    client.custom_metadata_fields.delete(field.id)
    emit("metadata_field.delete", "DELETE", f"/v1/customMetadataFields/{field.id}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except imagekitio.ImageKitError as e:  # status errors, connection errors, timeouts, bad options
        status = getattr(e, "status_code", None)
        print(f"imagekit_calls.py: SDK error ({type(e).__name__}, status {status}): {e}", file=sys.stderr)
        sys.exit(1)
