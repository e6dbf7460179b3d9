"""The Blender engine: renders cgan-search/scene@1 descriptions with Blender (Cycles) and the i-CLEVR
generator's own assets (base_scene.blend, shapes, materials), in one Blender process per chunk of scenes.

script.py is what Blender runs (bpy and the standard library only); engine.py drives it; dataset.py writes
the course layout and the reference set. Importing this package needs no Blender: only rendering does.
"""

from trainers.data.blender.engine import (
    ASSETS_ENV,
    BLENDER_ENV,
    BlenderError,
    SceneFiles,
    check_scene,
    find_assets,
    find_blender,
    object_pixels,
    read_mask,
    render_scenes,
)

__all__ = [
    "ASSETS_ENV",
    "BLENDER_ENV",
    "BlenderError",
    "SceneFiles",
    "check_scene",
    "find_assets",
    "find_blender",
    "object_pixels",
    "read_mask",
    "render_scenes",
]
