"""Run by Blender, not by the project: `blender -b -noaudio --python script.py -- MANIFEST.json`.

Blender's own Python has no numpy, torch or project code, so this file uses bpy and the standard library
only, and everything it needs comes in the manifest (written by trainers.data.blender.engine):

    {"assets": DIR, "shadows": bool, "size": [W, H], "samples": N,
     "jobs": [{"scene": <cgan-search/scene@1>, "images": [PNG, ...], "masks": [PNG, ...] | null}, ...]}

Job j's images[k] shows the scene's first k+1 objects, as CLEVR's generator saves a frame after each added
object. masks[k] (when asked) is an 8-bit gray PNG of Cycles' object-index pass of the same render: 0 for the
floor, i+1 where objects[i] is the first surface a pixel's first sample meets. Every file is written to a
temporary sibling and renamed, so a killed render never leaves half a PNG. Progress goes to stdout as
`@cgan-search <event> <job>` lines, which the driver reads.
"""

import array
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import traceback
import zlib

import bpy

# The generator's asset names: shape files hold one object named as the file; material files one node
# group named as the file, whose Color input takes linear RGBA.
SHAPE_FILES = {"cube": "SmoothCube_v2", "sphere": "Sphere", "cylinder": "SmoothCylinder"}
MATERIAL_FILES = {"rubber": "Rubber", "metal": "MyMetal"}
LAMPS = ("Lamp_Key", "Lamp_Back", "Lamp_Fill")
# CLEVR's generator renders with 8 light bounces and blurs glossy paths by 2 (its defaults); the base
# scene file stores 12 bounces and no blur, which only the generator's script changed.
BOUNCES = 8
BLUR_GLOSSY = 2.0
CYCLES_SEED_RANGE = 2**31  # Cycles' seed property is a C int
FRAME_ASPECT = 320 / 240  # the base scene's frame


def say(event, job):
    print(f"@cgan-search {event} {job}", flush=True)


def replace_atomically(write, path):
    """write(tmp) then rename onto path. The temporary name ends in .png: Blender picks formats by it."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.png")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_gray_png(path, width, rows):
    """An 8-bit gray PNG from rows of bytes (top row first): PNG needs only zlib and CRCs."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(r) for r in rows)  # filter type 0 per row
    head = struct.pack(">IIBBBBB", width, len(rows), 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def strip_png_text(path):
    """Drop a PNG's text chunks: Cycles stamps its render times into every frame, so the same scene would
    give other bytes on every run."""
    with open(path, "rb") as f:
        data = f.read()
    out, at = [data[:8]], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 12 + length
        if data[at + 4 : at + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(data[at:end])
        at = end
    with open(path, "wb") as f:
        f.write(b"".join(out))


def save_frame(image, scene, path):
    image.save_render(filepath=path, scene=scene)
    strip_png_text(path)


def load_library(path, kind, name):
    """Append one data-block (an object or a node group) from a .blend file; return it."""
    with bpy.data.libraries.load(path) as (_, into):
        setattr(into, kind, [name])
    block = getattr(into, kind)[0]
    if block is None:
        raise RuntimeError(f"{path}: has no {kind[:-1]} named {name!r}")
    return block


def setup(manifest):
    """Open the base scene, set the render up, load shapes and materials once for every job."""
    assets = manifest["assets"]
    base = "base_scene.blend" if manifest["shadows"] else "base_scene_no_shadow.blend"
    bpy.ops.wm.open_mainfile(filepath=os.path.join(assets, base))
    scene = bpy.context.scene
    width, height = manifest["size"]
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y = width, height
    render.resolution_percentage = 100  # the files store 50%
    # Every size shows the base scene's 4:3 view, squashed to the asked pixels as the fast engine does (and as
    # the loaders squash 320x240 frames): Blender frames pixels * pixel aspect, and wants both aspects >= 1.
    aspect = width / height
    render.pixel_aspect_x = max(1.0, FRAME_ASPECT / aspect)
    render.pixel_aspect_y = max(1.0, aspect / FRAME_ASPECT)
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"  # the course's frames are opaque RGBA PNGs
    render.image_settings.color_depth = "8"
    render.film_transparent = False
    # No metadata in the PNGs (date, frame, ...): the same scene and settings give the same bytes.
    for name in dir(render):
        if name.startswith("use_stamp"):
            setattr(render, name, False)
    # Keep the synced scene between the renders of a process: each frame only adds one object.
    render.use_persistent_data = True
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = manifest["samples"]
    cycles.use_adaptive_sampling = False  # a fixed sample count: the grain is the same in every frame
    cycles.use_denoising = False
    cycles.max_bounces = BOUNCES
    cycles.transparent_max_bounces = BOUNCES
    cycles.blur_glossy = BLUR_GLOSSY

    masks = None
    if any(job.get("masks") for job in manifest["jobs"]):
        # The object-index pass leaves through a File Output node as a float EXR (no view transform touches
        # it), which is read back and rewritten as a small gray PNG. In background mode no other render
        # buffer is readable: the Viewer image is not updated and Render Result has no pixels.
        masks = tempfile.mkdtemp(prefix="cgan-index-")
        scene.view_layers[0].use_pass_object_index = True
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
        layers = tree.nodes.new("CompositorNodeRLayers")
        composite = tree.nodes.new("CompositorNodeComposite")
        index = tree.nodes.new("CompositorNodeOutputFile")
        index.base_path = masks
        index.file_slots[0].path = "index_"
        index.format.file_format = "OPEN_EXR"
        index.format.color_depth = "32"
        index.format.exr_codec = "ZIP"
        tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
        tree.links.new(layers.outputs["IndexOB"], index.inputs[0])

    shapes = {
        key: load_library(os.path.join(assets, "shapes", f"{name}.blend"), "objects", name)
        for key, name in SHAPE_FILES.items()
    }
    groups = {}
    wanted = {o["material"] for job in manifest["jobs"] for o in job["scene"]["objects"]}
    for key in sorted(wanted):
        name = MATERIAL_FILES[key]
        groups[key] = load_library(os.path.join(assets, "materials", f"{name}.blend"), "node_groups", name)
    return scene, shapes, groups, masks


def add_object(scene, shapes, groups, spec, index):
    """One object of the scene description: its mesh scaled by the radius (a cube by radius/sqrt 2, so its
    corners reach the radius), resting on the floor, turned about z, with its own material."""
    source = shapes[spec["shape"]]
    obj = source.copy()
    obj.data = source.data.copy()
    scale = spec["radius"] / math.sqrt(2) if spec["shape"] == "cube" else spec["radius"]
    x, y = spec["position"]
    obj.location = (x, y, scale)
    obj.scale = (scale, scale, scale)
    obj.rotation_euler = (0.0, 0.0, spec["rotation"])
    obj.pass_index = index + 1  # 0 is the floor in the index pass

    material = bpy.data.materials.new(f"cgan_{index}")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()  # a new material starts with a Principled BSDF; the group replaces it
    output = nodes.new("ShaderNodeOutputMaterial")
    group = nodes.new("ShaderNodeGroup")
    group.node_tree = groups[spec["material"]]
    # RGB/255 straight into the Color input, as the generator does: Blender treats it as linear.
    group.inputs["Color"].default_value = [c / 255 for c in spec["rgb"]] + [1.0]
    material.node_tree.links.new(group.outputs["Shader"], output.inputs["Surface"])
    obj.data.materials.clear()
    obj.data.materials.append(material)
    scene.collection.objects.link(obj)
    return obj


def remove_objects(objects):
    for obj in objects:
        mesh, materials = obj.data, list(obj.data.materials)
        bpy.data.objects.remove(obj, do_unlink=True)
        bpy.data.meshes.remove(mesh)
        for material in materials:
            bpy.data.materials.remove(material)


def save_mask(scratch, path, width, height):
    """The index pass the File Output node just wrote (bottom row first) as a gray PNG, top row first."""
    (name,) = os.listdir(scratch)  # index_<frame>.exr
    exr = os.path.join(scratch, name)
    image = bpy.data.images.load(exr)
    try:
        if tuple(image.size) != (width, height):
            raise RuntimeError(f"the index pass is {tuple(image.size)}, expected {(width, height)}")
        values = array.array("f", bytes(4 * width * height * 4))
        image.pixels.foreach_get(values)
    finally:
        bpy.data.images.remove(image)
        os.unlink(exr)
    red = values[0::4]
    rows = [
        [min(255, max(0, round(v))) for v in red[r * width : (r + 1) * width]]
        for r in range(height - 1, -1, -1)
    ]
    replace_atomically(lambda tmp: write_gray_png(tmp, width, rows), path)


def render_job(scene, shapes, groups, masks, job, width, height):
    description = job["scene"]
    camera = bpy.data.objects["Camera"]
    camera.location = description["camera"]
    for name in LAMPS:
        bpy.data.objects[name].location = description["lamps"][name]
    scene.cycles.seed = int(description["seed"]) % CYCLES_SEED_RANGE
    added = []
    try:
        for k, spec in enumerate(description["objects"]):
            added.append(add_object(scene, shapes, groups, spec, k))
            bpy.ops.render.render(write_still=False)
            image = bpy.data.images["Render Result"]
            replace_atomically(lambda tmp, img=image: save_frame(img, scene, tmp), job["images"][k])
            if job.get("masks"):
                save_mask(masks, job["masks"][k], width, height)
            elif masks:
                for name in os.listdir(masks):  # another job asked for masks; this one did not
                    os.unlink(os.path.join(masks, name))
    finally:
        remove_objects(added)


def main():
    argv = sys.argv[sys.argv.index("--") + 1 :]
    with open(argv[0], encoding="utf-8") as f:
        manifest = json.load(f)
    parent = os.getppid()
    scene, shapes, groups, masks = setup(manifest)
    width, height = manifest["size"]
    try:
        for j, job in enumerate(manifest["jobs"]):
            if os.getppid() != parent:  # the driver died without stopping us: nobody reads these frames
                raise SystemExit("the driver process is gone; stopping")
            say("start", j)
            render_job(scene, shapes, groups, masks, job, width, height)
            say("done", j)
    finally:
        if masks:
            shutil.rmtree(masks, ignore_errors=True)


try:
    main()
except Exception:  # Blender would print the traceback and carry on
    traceback.print_exc()
    sys.stdout.flush()
    sys.exit(1)
