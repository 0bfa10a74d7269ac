"""ComfyUI's template browser serves a pack's workflows from the first of these folders that exists,
and shows ``<name>.jpg`` on each card (frontend 1.27): the pack's own folder must be workflows/."""

from __future__ import annotations

import re

from PIL import Image

from pack_helpers import EXAMPLE_PHOTO, REPO, WORKFLOWS

COMFYUI_TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_workflows_is_the_first_template_folder_comfyui_finds():
    first = next(name for name in COMFYUI_TEMPLATE_FOLDERS if (REPO / name).is_dir())
    assert first == "workflows" and WORKFLOWS


def test_every_workflow_has_a_jpeg_thumbnail_of_the_same_name():
    for workflow in WORKFLOWS:
        with Image.open(workflow.with_suffix(".jpg")) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (384, 384), workflow.name
    assert sorted(p.stem for p in (REPO / "workflows").glob("*.jpg")) == sorted(p.stem for p in WORKFLOWS)


def test_the_readmes_first_command_names_the_example_photo_where_it_is():
    readme = (REPO / "README.md").read_text()
    (path,) = set(re.findall(r"comfy_diffbfr restore (\S+\.png)", readme))
    assert REPO / path == EXAMPLE_PHOTO and EXAMPLE_PHOTO.is_file()
