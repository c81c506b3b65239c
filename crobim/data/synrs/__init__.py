"""SynRS: the project's synthetic referring-segmentation benchmark (generator and reader; DATA_AND_EVAL.md §9).

Needs only numpy, scipy and PIL.
"""

from crobim.data.synrs.dataset import SynRS
from crobim.data.synrs.expressions import make_expressions
from crobim.data.synrs.relations import SceneRelations
from crobim.data.synrs.render import render_scene
from crobim.data.synrs.scene import CLASSES, GENERATOR_VERSION, Expression, Instance, SceneGraph, SynRSParams
from crobim.data.synrs.templates import TEMPLATE_NAMES, template_probabilities
from crobim.data.synrs.writer import SPLITS, generate_split, scene_rng, write_dataset

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "SPLITS",
    "TEMPLATE_NAMES",
    "Expression",
    "Instance",
    "SceneGraph",
    "SceneRelations",
    "SynRS",
    "SynRSParams",
    "generate_split",
    "make_expressions",
    "render_scene",
    "scene_rng",
    "template_probabilities",
    "write_dataset",
]
