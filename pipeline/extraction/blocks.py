"""``extract.layers: blocks``: the output of every block of a keras.applications backbone, in depth order, per family."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import BLOCKS, ExtractConfig
from pipeline.extraction.backbone import ARCHITECTURES, headless_model
from pipeline.validation import check_one_of, invalid

log = logging.getLogger(__name__)

# Units per stage, for the families whose names number units within stages (conv4_block6, block4c) or that add a
# residual from a stage's second unit on (mobilenet_v2, mobilenet_v3); nasnet: normal cells per stage.
STAGES = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "resnet50v2": (3, 4, 6, 3),
    "resnet101v2": (3, 4, 23, 3),
    "resnet152v2": (3, 8, 36, 3),
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
    "efficientnetb0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnetb1": (2, 3, 3, 4, 4, 5, 2),
    "efficientnetb2": (2, 3, 3, 4, 4, 5, 2),
    "efficientnetb3": (2, 3, 3, 5, 5, 6, 2),
    "efficientnetb4": (2, 4, 4, 6, 6, 8, 2),
    "efficientnetv2b0": (1, 2, 2, 3, 5, 8),
    "efficientnetv2s": (2, 4, 4, 6, 9, 15),
    "mobilenetv2": (1, 2, 3, 4, 3, 3, 1),
    "mobilenetv3small": (1, 2, 3, 2, 3),
    "mobilenetv3large": (1, 2, 3, 4, 2, 3),
    "nasnetmobile": (4, 4, 4),
}
# The first block keeps the stem's width at stride 1, so it adds a residual too.
RESIDUAL_FIRST_BLOCK = {"mobilenetv3large"}
# The backbone's output where Keras leaves it unnamed: the name a fresh process gives it (numbered per Keras session;
# `python -m pipeline layers` and the default extract.layers name it so too).
OUTPUTS = {
    "mobilenetv3small": "activation_17",
    "mobilenetv3large": "activation_19",
    "nasnetmobile": "activation_187",
    "convnexttiny": "layer_normalization",
}


@dataclass(frozen=True)
class Family:
    """How a keras.applications family names the outputs of its blocks: ``rule`` in words, and ``names``, a model
    name -> its block outputs in depth order (the last one the backbone's output), without building the model."""

    rule: str
    names: Callable[[str], list[str]]


def _vgg(model: str) -> list[str]:
    return [f"block{n}_pool" for n in range(1, 6)]


def _resnet(model: str) -> list[str]:
    return [f"conv{stage}_block{units}_out" for stage, units in enumerate(STAGES[model], start=2)]


def _resnet_v2(model: str) -> list[str]:
    return [*_resnet(model)[:-1], "post_relu"]


def _densenet(model: str) -> list[str]:
    return [f"conv{stage}_block{units}_concat" for stage, units in enumerate(STAGES[model][:-1], start=2)] + ["relu"]


def _inception_v3(model: str) -> list[str]:
    return [f"mixed{n}" for n in range(11)]


def _inception_resnet_v2(model: str) -> list[str]:
    return ["mixed_5b", "block35_10_ac", "mixed_6a", "block17_20_ac", "mixed_7a", "conv_7b_ac"]


def _xception(model: str) -> list[str]:
    return ["block1_conv2_act", *(f"block{n}_sepconv1_act" for n in range(3, 14)), "block14_sepconv2_act"]


def _mobilenet(model: str) -> list[str]:
    return [f"conv_pw_{n}_relu" for n in range(1, 14)]


def _inverted_residuals(model: str, prefix: str, project: str) -> list[str]:
    """Each block's output: ``<block>_add`` where it adds a residual (a stage's second unit on), else
    ``<block>_<project>``; block 0 is ``expanded_conv``, block n ``<prefix>n``."""
    names, n = [], 0
    for units in STAGES[model]:
        for unit in range(units):
            block = f"{prefix}{n}" if n else "expanded_conv"
            residual = unit > 0 or (n == 0 and model in RESIDUAL_FIRST_BLOCK)
            names.append(f"{block}_{'add' if residual else project}")
            n += 1
    return names


def _mobilenet_v2(model: str) -> list[str]:
    return [*_inverted_residuals(model, "block_", "project_BN"), "out_relu"]


def _mobilenet_v3(model: str) -> list[str]:
    return [*_inverted_residuals(model, "expanded_conv_", "project_bn"), OUTPUTS[model]]


def _nasnet(model: str) -> list[str]:
    k = STAGES[model][0]  # normal cells in each of the 3 stages, numbered 0..k-1, k+1..2k, 2k+1..3k
    cells = ["reduction_concat_stem_1", "reduction_concat_stem_2", *(f"normal_concat_{i}" for i in range(k))]
    for stage in (1, 2):
        cells.append(f"reduction_concat_reduce_{stage * k}")
        cells += [f"normal_concat_{i}" for i in range(stage * k + 1, (stage + 1) * k + 1)]
    return [*cells[:-1], OUTPUTS[model]]  # the last cell's output, through a ReLU


def _efficientnet(model: str) -> list[str]:
    last_units = [f"block{stage}{chr(ord('a') + units - 1)}_{'add' if units > 1 else 'project_bn'}"
                  for stage, units in enumerate(STAGES[model], start=1)]
    return [*last_units, "top_activation"]


def _convnext(model: str) -> list[str]:
    prefix = f"convnext_{model.removeprefix('convnext')}"
    return [*(f"{prefix}_downsampling_block_{stage}" for stage in range(3)), OUTPUTS[model]]


# Per keras.applications family (Architecture.module). Where Keras numbers blocks (vgg's block3, mobilenet's conv_pw_3,
# inception_v3's mixed3), every block; where it numbers units within stages (resnet's conv4_block6, efficientnet's
# block4c), each stage's last unit. A block whose output Keras leaves unnamed (an add numbered per session) is given by
# the named layer after it, or left out; the last entry is always the backbone's output.
FAMILIES = {
    "vgg16": Family("blockN_pool, the pooling that ends each block", _vgg),
    "vgg19": Family("blockN_pool, the pooling that ends each block", _vgg),
    "resnet": Family("convS_blockU_out, the last unit of each stage", _resnet),
    "resnet_v2": Family("convS_blockU_out, the last unit of each stage; the last stage's after its batch norm and "
                        "ReLU, post_relu", _resnet_v2),
    "inception_v3": Family("mixedN, each Inception module", _inception_v3),
    "inception_resnet_v2": Family("the stem (mixed_5b), each reduction (mixed_6a, mixed_7a) and the last unit of each "
                                  "residual stage (block35_10_ac, block17_20_ac; the third's, unnamed, through "
                                  "conv_7b_ac)", _inception_resnet_v2),
    "xception": Family("each block: block1_conv2_act, blocks 2 to 12 as the ReLU that opens the next "
                       "(blockN_sepconv1_act; their residual adds are unnamed), block14_sepconv2_act",
                       _xception),
    "mobilenet": Family("conv_pw_N_relu, each depthwise separable block", _mobilenet),
    "mobilenet_v2": Family("each inverted residual block (block_N_add, or block_N_project_BN without a residual), "
                           "then out_relu", _mobilenet_v2),
    "mobilenet_v3": Family("each inverted residual block (expanded_conv_N_add, or expanded_conv_N_project_bn without "
                           "a residual), then the output", _mobilenet_v3),
    "densenet": Family("convS_blockU_concat, the last unit of each dense block; the last block's after its batch "
                       "norm and ReLU, relu", _densenet),
    "nasnet": Family("each cell (reduction_concat_stem_N, normal_concat_N, reduction_concat_reduce_N); the last "
                     "one's through the output ReLU", _nasnet),
    "efficientnet": Family("blockSx_add (or blockSx_project_bn), the last block of each stage, then top_activation",
                           _efficientnet),
    "efficientnet_v2": Family("blockSx_add (or blockSx_project_bn), the last block of each stage, then "
                              "top_activation", _efficientnet),
    "convnext": Family("each stage through the downsampling after it (its residual sums are unnamed), the last "
                       "through the output layer norm", _convnext),
}
SHOWN_LAYERS = 30  # the layers an error names, of a backbone without blocks


def block_layers(backbone: str, input_size: tuple[int, int] | None = None, key: str = "extract.layers") -> list[str]:
    """The output of every block of keras.applications ``backbone``, in depth order, by its family's rule (no model
    is built). A ``.keras`` backbone, or a family without a rule, is a ConfigError under ``key`` that lists the
    backbone's layers (built without weights at ``input_size``)."""
    if not backbone.endswith(".keras"):
        family = FAMILIES.get(ARCHITECTURES[check_one_of("extract.backbone", backbone, ARCHITECTURES)].module)
        if family is not None:
            return family.names(backbone)
    names = [layer.name for layer in headless_model(backbone, input_size, "extract.backbone").layers]
    shown = ", ".join(names[:SHOWN_LAYERS])
    if len(names) > SHOWN_LAYERS:
        shown += f", ... ({len(names) - SHOWN_LAYERS} more: python -m pipeline layers {backbone})"
    why = "a .keras file" if backbone.endswith(".keras") else f"the family {ARCHITECTURES[backbone].module}"
    what = (f"layer names of {backbone}: {BLOCKS!r} (the output of every block) is known for keras.applications "
            f"families only, not for {why}. Its {len(names)} layers: {shown}")
    raise invalid(key, BLOCKS, what)


def expand_blocks(config: ExtractConfig) -> ExtractConfig:
    """``config`` with ``extract.layers: blocks`` replaced by the backbone's block outputs (``block_layers``), each
    with the pooling and dtype ``blocks`` has; any other config as it is. Stage one calls it before the config is
    hashed or recorded, so that a features file and its provenance name the layers it holds."""
    if not config.blocks:
        return config
    (spec,) = config.layers
    names = block_layers(config.backbone, config.input_size)
    family = FAMILIES[ARCHITECTURES[config.backbone].module]
    log.info("extract.layers: blocks of %s (%s): %s", config.backbone, family.rule, ", ".join(names))
    return dataclasses.replace(config, layers=tuple(dataclasses.replace(spec, name=name) for name in names))
