"""Dataset, transforms and collate on prepared data (crafted COCO and the synthetic set)."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.config import AugmentParams, InputParams, SyntheticParams
from pipeline.data.dataset import InstanceDataset, collate, finish_target, fit_boxes_to_masks, read_rgb
from pipeline.data.transforms import PhotometricDistort, ResizeWithExactMasks, build_transforms, rotate_hue
from pipeline.data.layout import annotations_path, ground_truth_path, read_label_map
from pipeline.utils.errors import PipelineError
from pipeline.prepare.roles import prepare
from pipeline.synthetic.shapes import generate
from tests import crafted_coco

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensor ops on 2 shared cores run faster without intra-op threads (as in loader workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def input_params(size: int = SIZE, **augment) -> InputParams:
    return InputParams(size=size, augment=replace(AugmentParams(), **augment))


def prepare_all(root: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    prepare(root, {"train": "train", "val": "val", "test": "test"}, out, categories=None, max_images=None,
            keep_empty_train=False, strict=False, allow_overlap=True)  # crafted_coco's roles share pictures
    return out


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("crafted")
    return prepare_all(crafted_coco.build(tmp / "coco"), tmp / "prepared")


@pytest.fixture
def crafted_copy(tmp_path) -> Path:
    """A crafted COCO root and its prepared data that a test may damage."""
    return prepare_all(crafted_coco.build(tmp_path / "coco"), tmp_path / "prepared")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("synthetic")
    generate(tmp / "synthetic", SyntheticParams(train_images=16, val_images=4, test_images=2, crowd_prob=0.5), seed=1)
    return prepare_all(tmp / "synthetic", tmp / "prepared")


def pixel_boxes(target: dict, size: int) -> torch.Tensor:
    return target["boxes"] * size


def mask_extents(masks: torch.Tensor) -> torch.Tensor:
    extents = masks_to_boxes(masks).float()
    extents[:, 2:] += 1
    return extents


def test_item_has_the_documented_types_and_shapes(crafted):
    dataset = InstanceDataset(crafted, "train", build_transforms(input_params(), train=False))
    image, target = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    g = len(target["labels"])
    assert target["boxes"].shape == (g, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["masks"].shape == (g, SIZE, SIZE)
    assert target["masks"].dtype == torch.uint8
    assert target["crowd_boxes"].shape == (2, 4)  # the two crowd annotations of image 1
    assert target["image_id"] == 1 and target["orig_size"] == (crafted_coco.HEIGHT, crafted_coco.WIDTH)
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_eval_transform_scales_boxes_and_masks_exactly(crafted):
    dataset = InstanceDataset(crafted, "train", build_transforms(input_params(size=128), train=False))
    _, target = dataset[0]
    # Annotation 1 is the square [4, 4, 16, 16] on a 64 x 48 image: x * 2, y * 8 / 3 at 128 x 128.
    expected = torch.tensor([4 / 64, 4 / 48, 20 / 64, 20 / 48])
    assert torch.allclose(target["boxes"][0], expected, atol=1e-6)
    assert torch.equal(mask_extents(target["masks"][:1])[0], torch.tensor([8.0, 11.0, 40.0, 53.0]))
    crowd = torch.tensor([2 / 64, 30 / 48, 20 / 64, 44 / 48])
    assert torch.allclose(target["crowd_boxes"][0], crowd, atol=1e-6)


def test_images_are_normalised_rgb_whatever_their_mode(crafted):
    params = input_params()
    dataset = InstanceDataset(crafted, "train", build_transforms(params, train=False))
    mean = torch.tensor(params.mean).view(3, 1, 1)
    std = torch.tensor(params.std).view(3, 1, 1)
    modes = {}
    for index, image_id in enumerate(dataset.image_ids):
        image, _ = dataset[index]
        modes[dataset.coco.imgs[image_id]["file_name"]] = image * std + mean
    rgb = modes["rgb.jpg"]
    assert abs(rgb[0].mean() - 127) < 10 and abs(rgb[2].mean() - 128) < 10  # the crafted picture
    for name in ("gray.jpg", "deep.png"):
        gray = modes[name]
        assert torch.allclose(gray[0], gray[1], atol=1e-3) and torch.allclose(gray[1], gray[2], atol=1e-3)
    assert (modes["deep.png"] - modes["gray.jpg"]).abs().mean() < 3  # 16-bit scaled to 8
    for name in ("rgba.png", "cmyk.jpg", "bitmap.bmp"):
        assert (modes[name] - rgb).abs().mean() < 12


def test_collate_stacks_images_and_keeps_targets(crafted):
    dataset = InstanceDataset(crafted, "train", build_transforms(input_params(), train=False))
    images, targets = collate([dataset[0], dataset[1], dataset[2]])
    assert images.shape == (3, 3, SIZE, SIZE)
    assert [t["image_id"] for t in targets] == dataset.image_ids[:3]


def test_label_map_and_paths(crafted):
    assert read_label_map(crafted) == [{"label": 0, "category_id": 1, "name": "cat"},
                                       {"label": 1, "category_id": 3, "name": "dog"}]
    assert annotations_path(crafted, "val") == crafted / "val.json"
    assert ground_truth_path(crafted, "test") == crafted / "gt_test.json"
    dataset = InstanceDataset(crafted, "train", build_transforms(input_params(), train=False))
    _, target = dataset[dataset.image_ids.index(11)]
    assert target["labels"].tolist() == [1]  # category 3 ("dog") is label 1
    assert InstanceDataset(crafted, "test", build_transforms(input_params(), train=False)).image_ids == [7, 8]
    with pytest.raises(ValueError):
        annotations_path(crafted, "minival")
    with pytest.raises(ValueError):
        ground_truth_path(crafted, "train")


@pytest.mark.parametrize("damage", ["delete", "truncate", "resize"])
def test_an_image_damaged_after_prepare_raises_naming_it(crafted_copy, damage):
    dataset = InstanceDataset(crafted_copy, "test", build_transforms(input_params(), train=False))
    path = dataset.image_dir / "c.jpg"
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        crafted_coco.picture(size=(20, 10)).save(path)
    with pytest.raises(PipelineError, match=r"test/c\.jpg: .*prepare") as err:
        dataset[0]
    assert "\n" not in str(err.value)


def test_read_rgb_names_a_file_that_is_no_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(PipelineError, match="notes.png"):
        read_rgb(path)


def test_images_without_instances_load(crafted, tmp_path):
    dataset = InstanceDataset(crafted, "val", build_transforms(input_params(), train=True))
    torch.manual_seed(0)
    for _ in range(5):
        _, target = dataset[1]  # val image 2 has no annotation
        assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, SIZE, SIZE)


@pytest.mark.parametrize("seed", range(3))
def test_train_transforms_keep_masks_boxes_and_pixels_aligned(synthetic, seed):
    """Paint each instance in a pure colour; after the geometric transforms the image under each
    mask must still be that colour, and each box must be its mask's extent within 1 px."""
    params = input_params(size=96, photometric=False)
    transforms = build_transforms(params, train=True)
    dataset = InstanceDataset(synthetic, "train", transforms)
    torch.manual_seed(seed)
    mean = torch.tensor(params.mean).view(3, 1, 1)
    std = torch.tensor(params.std).view(3, 1, 1)
    palette = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                            [255, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128]], dtype=torch.uint8)
    checked = 0
    for image_id in dataset.image_ids:
        image, raw = dataset.load(image_id)
        painted = torch.zeros_like(image)
        for k, mask in enumerate(raw["masks"]):
            painted[:, mask.bool()] = palette[k % len(palette)].view(3, 1)
        raw["labels"] = torch.arange(len(raw["labels"]))  # remember which instance is which
        out_image, out = transforms(tv_tensors.Image(painted), raw)
        pixels = (out_image * std + mean).round()
        masks = out["masks"].as_subclass(torch.Tensor)
        boxes = out["boxes"].as_subclass(torch.Tensor)
        # Edge pixels are blended by the antialiased resize: look at each mask's interior only.
        interior = -torch.nn.functional.max_pool2d(-masks[None].float(), 3, stride=1, padding=1)[0]
        for k, mask in zip(out["labels"].tolist(), interior):
            inside = pixels[:, mask.bool()]
            if inside.shape[1] < 10:
                continue
            matches = (inside - palette[k % len(palette)].view(3, 1).float()).abs().amax(0) < 40
            assert matches.float().mean() > 0.9
            checked += 1
        fitted, keep = fit_boxes_to_masks(boxes, masks)
        assert torch.allclose(fitted[keep], mask_extents(masks[keep]), atol=1.0)
    assert checked > len(dataset.image_ids)


def test_crowd_boxes_follow_the_geometry(synthetic):
    transforms = build_transforms(input_params(size=96), train=True)
    dataset = InstanceDataset(synthetic, "train", transforms)
    torch.manual_seed(0)
    crowd_images = [i for i in dataset.image_ids if any(a["iscrowd"] for a in dataset.coco.imgToAnns[i])]
    assert crowd_images
    checked = 0
    for image_id in crowd_images * 3:
        image, raw = dataset.load(image_id)
        _, out = transforms(image, raw)
        crowd = out["iscrowd"]
        masks = out["masks"].as_subclass(torch.Tensor)[crowd]
        boxes = out["boxes"].as_subclass(torch.Tensor)[crowd]
        fitted, keep = fit_boxes_to_masks(boxes, masks)
        if keep.any():
            assert torch.allclose(fitted[keep], mask_extents(masks[keep]), atol=1.0)
            checked += 1
    assert checked > 0


def test_random_train_items_have_boxes_matching_masks(synthetic):
    dataset = InstanceDataset(synthetic, "train", build_transforms(input_params(size=96), train=True))
    torch.manual_seed(0)
    instances = 0
    for _ in range(2):
        for index in range(len(dataset)):
            _, target = dataset[index]
            if len(target["masks"]):
                assert torch.allclose(pixel_boxes(target, 96), mask_extents(target["masks"]), atol=1.0)
                instances += len(target["masks"])
    assert instances > len(dataset)  # most instances survive the crops


def test_without_crops_no_instance_is_lost(synthetic):
    dataset = InstanceDataset(synthetic, "train", build_transforms(input_params(size=96, random_crop=False), train=True))
    torch.manual_seed(0)
    for index, image_id in enumerate(dataset.image_ids):
        anns = dataset.coco.imgToAnns[image_id]
        _, target = dataset[index]
        assert len(target["boxes"]) == sum(not a["iscrowd"] for a in anns)
        assert len(target["crowd_boxes"]) == sum(a["iscrowd"] for a in anns)
        assert torch.allclose(pixel_boxes(target, 96), mask_extents(target["masks"]), atol=1.0)


def test_transforms_are_reproducible_from_the_torch_seed(synthetic):
    dataset = InstanceDataset(synthetic, "train", build_transforms(input_params(size=96), train=True))
    torch.manual_seed(5)
    first = [dataset[i] for i in range(4)]
    torch.manual_seed(5)
    second = [dataset[i] for i in range(4)]
    for (image_a, target_a), (image_b, target_b) in zip(first, second):
        assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])


def test_fit_boxes_to_masks_shrinks_cut_boxes_and_drops_empty_masks():
    masks = torch.zeros(3, 10, 10, dtype=torch.uint8)
    masks[0, 2:5, 2:8] = 1  # what a crop left of an L-shaped object
    masks[1, 1:9, 1:9] = 1
    boxes = torch.tensor([[2.0, 2.0, 9.5, 9.0], [1.2, 0.8, 8.7, 9.0], [0.0, 0.0, 5.0, 5.0]])
    fitted, keep = fit_boxes_to_masks(boxes, masks)
    assert keep.tolist() == [True, True, False]
    assert fitted[0].tolist() == [2.0, 2.0, 8.0, 5.0]  # x2 and y2 overshoot by more than 1 px
    assert torch.equal(fitted[1], boxes[1])  # within 1 px of the mask: left exactly as it was


def test_finish_target_clamps_drops_vanished_instances_and_splits_crowd():
    masks = torch.zeros(4, 10, 20, dtype=torch.uint8)
    masks[0, 0:4, 15:20] = 1  # its box runs off the right edge
    masks[1, 5, 3] = 1  # a sliver: its box is half a pixel wide
    masks[2, 2:8, 2:8] = 1  # crowd
    masks[3, 1:3, 1:3] = 1
    target = {
        "boxes": torch.tensor([[15.0, -2.0, 23.0, 4.0], [3.0, 5.0, 3.5, 6.0], [2.0, 2.0, 8.0, 8.0], [1.0, 1.0, 3.0, 3.0]]),
        "masks": tv_tensors.Mask(masks), "labels": torch.tensor([0, 1, 2, 3]),
        "iscrowd": torch.tensor([False, False, True, False]), "orig_size": (10, 20),
    }
    out = finish_target(target, image_id=7)
    assert out["labels"].tolist() == [0, 3] and out["masks"].shape == (2, 10, 20)
    assert torch.allclose(out["boxes"], torch.tensor([[0.75, 0.0, 1.0, 0.4], [0.05, 0.1, 0.15, 0.3]]))
    assert torch.allclose(out["crowd_boxes"], torch.tensor([[0.1, 0.2, 0.4, 0.8]]))
    assert out["image_id"] == 7 and out["orig_size"] == (10, 20)


def test_mask_resize_is_centre_aligned_like_the_boxes():
    mask = torch.zeros(1, 1, 10, dtype=torch.uint8)
    mask[..., 9] = 1  # the last column: [9, 10) in pixel-edge coordinates, [4.5, 5) at half size
    boxes = tv_tensors.BoundingBoxes([[9.0, 0.0, 10.0, 1.0]], format="XYXY", canvas_size=(1, 10))
    out_mask, out_boxes = ResizeWithExactMasks((1, 5))(tv_tensors.Mask(mask), boxes)
    assert out_mask[0, 0].tolist() == [0, 0, 0, 0, 1]
    assert out_boxes.tolist() == [[4.5, 0.0, 5.0, 1.0]]


def colour_wheel() -> torch.Tensor:
    """uint8 [3, 16, 16]: saturated colours all round the wheel, with grey and white rows."""
    hue = torch.linspace(0, 1, 16).expand(14, 16)
    hsv = torch.stack([hue, torch.full_like(hue, 0.8), torch.full_like(hue, 0.9)])
    rgb = _hsv_to_rgb(hsv)
    return torch.cat([rgb, torch.full((3, 1, 16), 0.5), torch.ones(3, 1, 16)], dim=1).mul(255).round().to(torch.uint8)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv
    k = lambda n: (n + h * 6) % 6
    channel = lambda n: v - v * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)
    return torch.stack([channel(5), channel(3), channel(1)])


def test_hue_rotation_turns_like_torchvisions_hue_and_keeps_grey_and_luma():
    image = colour_wheel()
    assert torch.equal(rotate_hue(image, 0.0), image)
    for factor in (0.05, -0.1, 0.2):
        ours = rotate_hue(image, factor).float()
        towards = (ours - F.adjust_hue(image, factor).float()).abs().mean()
        away = (ours - F.adjust_hue(image, -factor).float()).abs().mean()
        assert towards < 0.5 * away, (factor, towards, away)
    grey = image[:, 14:].float()
    assert (rotate_hue(image, 0.3)[:, 14:].float() - grey).abs().max() <= 1  # no chroma, nothing to turn
    as_float = image.float() / 255
    luma = torch.tensor([0.299, 0.587, 0.114]) @ as_float.flatten(1)
    turned = rotate_hue(as_float * 0.2 + 0.4, 0.25)  # stays inside [0, 1]: no clamping
    assert torch.allclose(torch.tensor([0.299, 0.587, 0.114]) @ turned.flatten(1), luma * 0.2 + 0.4, atol=1e-5)


def test_photometric_distortion_draws_like_torchvision_and_leaves_targets_alone():
    image = tv_tensors.Image(colour_wheel())
    masks = tv_tensors.Mask(torch.ones(1, 16, 16, dtype=torch.uint8))
    for seed in range(4):  # without hue the two must agree exactly: same draws, same order
        torch.manual_seed(seed)
        out, out_masks = PhotometricDistort(hue=(0.0, 0.0), p=0.7)(image, masks)
        torch.manual_seed(seed)
        reference = v2.RandomPhotometricDistort(hue=(0.0, 0.0), p=0.7)(image)
        assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
        assert torch.equal(out, reference) and torch.equal(out_masks, masks)
    torch.manual_seed(0)
    assert not torch.equal(PhotometricDistort(p=1.0)(image), image)
    assert torch.equal(PhotometricDistort(p=0.0)(image), image)
