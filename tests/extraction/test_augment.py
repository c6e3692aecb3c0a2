"""Seeded augmentation: the same view for the same seed, image and view number; a different one otherwise."""

from __future__ import annotations

import numpy as np

from pipeline.config import AugmentConfig
from pipeline.extraction.augment import augment, augment_views, view_rng

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)


def test_views_are_deterministic_for_a_seed_and_differ_from_the_clean_image():
    config = AugmentConfig(flip="horizontal", rotation=15, crop=0.8, seed=1)
    views = augment_views(IMAGES, ["a", "b", "c"], 2, config)
    assert views.shape == (2, *IMAGES.shape) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, augment_views(IMAGES, ["a", "b", "c"], 2, config))
    assert all(not np.array_equal(views[v, i], IMAGES[i]) for v in range(2) for i in range(3))
    assert not np.array_equal(views[0], views[1])
    assert not np.array_equal(views, augment_views(IMAGES, ["a", "b", "c"], 2, AugmentConfig(rotation=15, crop=0.8, seed=2)))


def test_a_view_depends_on_the_image_key_not_on_its_batch():
    config = AugmentConfig(rotation=30, crop=0.7)
    alone = augment_views(IMAGES[1:2], ["b"], 1, config)[0, 0]
    np.testing.assert_array_equal(alone, augment_views(IMAGES, ["a", "b", "c"], 1, config)[0, 1])
    assert not np.array_equal(alone, augment_views(IMAGES[1:2], ["other"], 1, config)[0, 0])


def test_turned_off_settings_leave_the_image_alone_or_only_flip_it():
    still = AugmentConfig(flip="none", rotation=0, crop=1.0)
    np.testing.assert_array_equal(augment(IMAGES[0], still, view_rng(0, "a", 0)), IMAGES[0])
    flip = AugmentConfig(flip="horizontal", rotation=0, crop=1.0)
    outcomes = {augment(IMAGES[0], flip, view_rng(0, str(key), 0)).tobytes() for key in range(20)}
    assert outcomes == {IMAGES[0].tobytes(), IMAGES[0][:, ::-1].tobytes()}


def test_rotation_fills_the_uncovered_corners_with_the_border_colour():
    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    white[12:20, 12:20] = 0  # a dark square on a white background
    rotated = augment(white, AugmentConfig(rotation=45, crop=1.0), view_rng(0, "square", 0))
    assert (rotated[0, 0] == 255).all() and (rotated[-1, -1] == 255).all()  # corners stay white, not black
    assert rotated.min() < 50  # the square is still there
