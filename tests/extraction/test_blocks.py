"""extract.layers: blocks: each family's rule names the output of every block in depth order, checked against the built
models; a .keras backbone or a family without a rule is an error listing its layers; the expansion is what is recorded."""

from __future__ import annotations

import re

import h5py
import pytest

from pipeline.config import BLOCKS, ExtractConfig, LayerSpec
from pipeline.extraction.backbone import ARCHITECTURES, headless_model
from pipeline.extraction.blocks import FAMILIES, block_layers, expand_blocks
from pipeline.extraction.provenance import config_identity
from pipeline.store import read_attrs
from pipeline.validation import ConfigError

MOBILENET = [f"conv_pw_{n}_relu" for n in range(1, 14)]
# The expansion of a model of each family, written out: the table's specification.
EXPECTED = {
    "mobilenet": MOBILENET,
    "vgg16": ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"],
    "resnet50": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
    "resnet152v2": ["conv2_block3_out", "conv3_block8_out", "conv4_block36_out", "post_relu"],
    "densenet169": ["conv2_block6_concat", "conv3_block12_concat", "conv4_block32_concat", "relu"],
    "inceptionv3": [f"mixed{n}" for n in range(11)],
    "inceptionresnetv2": ["mixed_5b", "block35_10_ac", "mixed_6a", "block17_20_ac", "mixed_7a", "conv_7b_ac"],
    "xception": ["block1_conv2_act", *(f"block{n}_sepconv1_act" for n in range(3, 14)), "block14_sepconv2_act"],
    "mobilenetv2": [
        "expanded_conv_project_BN", "block_1_project_BN", "block_2_add", "block_3_project_BN", "block_4_add",
        "block_5_add", "block_6_project_BN", "block_7_add", "block_8_add", "block_9_add", "block_10_project_BN",
        "block_11_add", "block_12_add", "block_13_project_BN", "block_14_add", "block_15_add", "block_16_project_BN",
        "out_relu",
    ],
    "mobilenetv3large": [
        "expanded_conv_add", "expanded_conv_1_project_bn", "expanded_conv_2_add", "expanded_conv_3_project_bn",
        "expanded_conv_4_add", "expanded_conv_5_add", "expanded_conv_6_project_bn", "expanded_conv_7_add",
        "expanded_conv_8_add", "expanded_conv_9_add", "expanded_conv_10_project_bn", "expanded_conv_11_add",
        "expanded_conv_12_project_bn", "expanded_conv_13_add", "expanded_conv_14_add", "activation_19",
    ],
    "nasnetmobile": [
        "reduction_concat_stem_1", "reduction_concat_stem_2", *(f"normal_concat_{i}" for i in range(4)),
        "reduction_concat_reduce_4", *(f"normal_concat_{i}" for i in range(5, 9)),
        "reduction_concat_reduce_8", *(f"normal_concat_{i}" for i in range(9, 12)), "activation_187",
    ],
    "efficientnetb0": ["block1a_project_bn", "block2b_add", "block3b_add", "block4c_add", "block5c_add", "block6d_add",
                       "block7a_project_bn", "top_activation"],
    "efficientnetv2s": ["block1b_add", "block2d_add", "block3d_add", "block4f_add", "block5i_add", "block6o_add",
                        "top_activation"],
    "convnexttiny": [*(f"convnext_tiny_downsampling_block_{i}" for i in range(3)), "layer_normalization"],
}
SIZE = (75, 75)  # the smallest input every keras.applications model takes (inception_v3, xception)


@pytest.mark.parametrize("backbone", sorted(EXPECTED))
def test_each_familys_rule_names_its_blocks(backbone):
    assert block_layers(backbone) == EXPECTED[backbone]


def test_every_keras_applications_family_has_a_rule():
    assert {ARCHITECTURES[name].module for name in ARCHITECTURES} <= set(FAMILIES)


def check_against_the_built_model(backbone: str, size: tuple[int, int]) -> None:
    """Every expanded name is a layer of the built model, in depth order, the last one its output."""
    layers = [layer.name for layer in headless_model(backbone, size).layers]
    names = block_layers(backbone)
    assert set(names) <= set(layers), sorted(set(names) - set(layers))
    depth = [layers.index(name) for name in names]
    assert depth == sorted(set(depth))
    assert names[-1] == layers[-1]


@pytest.mark.parametrize("backbone", ["mobilenet", "vgg16", "resnet50"])
def test_the_expansion_is_in_the_built_model_in_depth_order(backbone):
    check_against_the_built_model(backbone, (32, 32))


@pytest.mark.slow  # builds all 27 models, about 45 s on 2 cores
@pytest.mark.parametrize("backbone", sorted(ARCHITECTURES))
def test_every_backbones_expansion_is_in_its_built_model_in_depth_order(backbone):
    check_against_the_built_model(backbone, SIZE)


def parse(**extract) -> ExtractConfig:
    return ExtractConfig.from_params({"backbone": "mobilenet", **extract})


@pytest.mark.parametrize("layers", ["blocks", ["blocks"], {"blocks": None}])
def test_blocks_expands_with_the_section_pooling_and_dtype(layers):
    config = parse(layers=layers, pooling="max", dtype="float16")
    assert config.blocks and config.layers == (LayerSpec(BLOCKS, "max", "float16"),)
    expanded = expand_blocks(config)
    assert expanded.layers == tuple(LayerSpec(name, "max", "float16") for name in MOBILENET)
    assert not expanded.blocks and expand_blocks(expanded) is expanded


def test_blocks_as_a_mapping_takes_its_own_pooling():
    config = expand_blocks(parse(layers={"blocks": {"pooling": "pyramid"}}))
    assert {(spec.pooling, spec.dtype) for spec in config.layers} == {("pyramid", "float32")}
    assert config.layer_names == MOBILENET


def test_the_expansion_is_the_config_of_its_layers_written_out():
    """Hashed, recorded and round-tripped like the same layers listed by name."""
    expanded = expand_blocks(parse(layers="blocks", input_size=[32, 32]))
    written = parse(layers=MOBILENET, input_size=[32, 32])
    assert expanded == written
    assert config_identity(expanded) == config_identity(written)
    assert ExtractConfig.from_recorded(expanded.to_params()).layer_names == MOBILENET


def test_blocks_among_other_layers_is_refused():
    message = ("extract.layers must be 'blocks' alone (the output of every block) or layer names without it. "
               "Received: extract.layers=['blocks', 'conv_pw_1_relu']")
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(layers=["blocks", "conv_pw_1_relu"])


def test_a_keras_file_has_no_blocks_and_the_error_lists_its_layers(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="features")(inputs)
    path = tmp_path / "mine.keras"
    keras.Model(inputs, keras.layers.Activation("relu", name="last_relu")(x)).save(path)
    config = parse(backbone=str(path), weights=None, preprocessing="tf", layers="blocks")
    message = (f"extract.layers must be layer names of {path}: 'blocks' (the output of every block) is known for "
               "keras.applications families only, not for a .keras file. Its 3 layers: image, features, "
               "last_relu. Received: extract.layers='blocks'")
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand_blocks(config)


def test_a_family_without_a_rule_is_an_error_listing_its_layers(monkeypatch):
    monkeypatch.delitem(FAMILIES, "mobilenet")
    message = ("extract.layers must be layer names of mobilenet: 'blocks' (the output of every block) is known for "
               "keras.applications families only, not for the family mobilenet. Its 86 layers: input_layer, conv1, "
               "conv1_bn, conv1_relu, conv_dw_1,")
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        block_layers("mobilenet", (32, 32))
    assert str(error.value).endswith(
        "... (56 more: python -m pipeline layers mobilenet). Received: extract.layers='blocks'"
    )


def test_an_unknown_backbone_is_the_backbones_error():
    with pytest.raises(ConfigError, match=re.escape("extract.backbone must be one of [")):
        block_layers("mobilenet4")


def test_a_blocks_extraction_stores_and_records_every_block_in_depth_order(manifest, tmp_path):
    from pipeline.extraction.extract import extract_features

    config = parse(layers="blocks", weights=None, input_size=[32, 32], batch_size=50)
    out = extract_features(manifest, config, tmp_path / "features.h5").path  # the stage expands it
    attrs = read_attrs(out)
    assert attrs["layers"] == MOBILENET
    assert list(attrs["extract_config"]["layers"]) == MOBILENET
    with h5py.File(out, "r") as f:
        assert sorted(f["features"]) == sorted(MOBILENET)
        assert f["features/conv_pw_1_relu"].shape == (len(manifest), 64)  # avg pooled
    recorded = ExtractConfig.from_recorded(attrs["extract_config"])
    assert recorded == expand_blocks(config)
