"""`BERG.describe(model_id)`: a model card as the nested dict BERG returns.

BERG builds its answer from its YAML model cards, so notebooks index into it, e.g.
`describe(m)["parameters"]["subject"]["valid_values"]` or
`describe(m)["parameters"]["selection"]["properties"]["roi"]["valid_values"]`. The
structure (key names and nesting) follows BERG 2.0.0; the texts come from berg-scale's
own cards and describe what berg-scale accepts.
"""

from __future__ import annotations

from typing import Any

from berg_scale.models import families
from berg_scale.models.registry import ModelCard

_DIMENSION_TEXT = {
    "voxel": "voxels of the selected ROI, in the order of the metadata's roi_mask_volume",
    "vertex": "fsaverage vertices (left and right hemisphere are returned as two arrays)",
    "repetition": "the model's repetitions (4 for the published models)",
    "channel": "EEG channels, in selection order (metadata order without a selection)",
    "time": "time points (seconds from stimulus onset in the metadata's times)",
}


def _selection_properties(card: ModelCard) -> dict[str, dict[str, Any]]:
    properties: dict[str, dict[str, Any]] = {}
    for key in card.selection_keys:
        if key == "roi":
            rois = card.accepted_rois()
            properties[key] = {
                "type": "str",
                "description": "Region of interest whose voxels/vertices are returned.",
                "valid_values": rois,
                "example": rois[0] if rois else None,
            }
        elif key in ("lh_vertices", "rh_vertices"):
            n = card.vertices_per_hemisphere
            properties[key] = {
                "type": "list or numpy.ndarray",
                "description": f"Binary vector of length {n}: 1 keeps the vertex of the "
                f"{'left' if key.startswith('lh') else 'right'} hemisphere (ignored when roi is given).",
            }
        elif key == "channels":
            properties[key] = {
                "type": "list",
                "description": "EEG channel names to return, in the order given.",
                "valid_values": list(card.channels),
                "example": list(card.channels[:1]),
            }
        elif key == "timepoints":
            properties[key] = {
                "type": "list or numpy.ndarray",
                "description": f"Binary vector of length {card.n_timepoints}: 1 keeps the time point.",
            }
        else:
            properties[key] = {"type": "unknown", "description": f"Selection key {key!r}."}
    return properties


def _input_info(card: ModelCard) -> dict[str, Any]:
    fwrf = card.preprocessing == "fwrf227"
    constraints = [
        "RGB images, channels first: shape (batch_size, 3, height, width), any size.",
        "uint8 with values 0..255 (preferred).",
    ]
    if fwrf:
        constraints.append("Integer arrays with values 0..255 and float arrays on the 0..255 scale "
                           "are also accepted and computed as BERG computes them.")
    else:
        constraints.append("Float arrays in [0, 1] are also accepted (as BERG scales them); other "
                           "integer dtypes are refused because BERG would darken them.")
    return {
        "type": "numpy.ndarray",
        "shape": ["batch_size", 3, "height", "width"],
        "description": card.input,
        "constraints": constraints,
    }


def _output_info(card: ModelCard) -> dict[str, Any]:
    dims = list(card.output.get("dims", []))
    pair = bool(card.family) and families.get_family(card.family).returns_tuple
    return {
        "type": "tuple of two numpy.ndarray (lh, rh)" if pair else "numpy.ndarray",
        "shape": ["batch_size", *(f"n_{d}s" for d in dims)],
        "description": str(card.output.get("shape", "")),
        "dimensions": [{"name": "batch_size", "description": "Number of stimuli in the batch"}]
        + [{"name": f"n_{d}s", "description": _DIMENSION_TEXT.get(d, d)} for d in dims],
    }


def _parameters(card: ModelCard) -> dict[str, dict[str, Any]]:
    subjects = list(card.subjects)
    return {
        "subject": {
            "type": "int",
            "required": True,
            "valid_values": subjects,
            "example": subjects[0] if subjects else None,
            "description": f"Subject number ({subjects[0]}-{subjects[-1]}); NumPy integers are accepted.",
            "function": "get_encoding_model",
        },
        "selection": {
            "type": "dict",
            "required": card.selection_required,
            "description": "Which outputs to return; see properties for the keys.",
            "function": "get_encoding_model",
            "properties": _selection_properties(card),
        },
        "device": {
            "type": "str",
            "required": False,
            "valid_values": ["cpu", "cuda", "auto"],
            "default": "auto",
            "example": "auto",
            "description": "'auto' uses CUDA when available, else the CPU; any device string "
            "torch accepts works too ('cuda:1', 'mps').",
            "function": "get_encoding_model",
        },
        "model": {
            "type": "EncodingModel",
            "required": True,
            "description": "A model returned by get_encoding_model.",
            "function": "encode",
        },
        "stimulus": {
            "type": "numpy.ndarray",
            "required": True,
            "shape": ["batch_size", 3, "height", "width"],
            "description": "A batch of RGB images (see input constraints).",
            "function": "encode",
        },
        "return_metadata": {
            "type": "bool",
            "required": False,
            "default": False,
            "description": "Also return the model's metadata dict.",
            "function": "encode",
        },
        "show_progress": {
            "type": "bool",
            "required": False,
            "default": True,
            "description": "Show a progress bar over batches of 100 images.",
            "function": "encode",
        },
    }


def describe_card(card: ModelCard) -> dict[str, Any]:
    """BERG's `describe` dict for one card (same keys and nesting as BERG 2.0.0)."""
    parameters = _parameters(card)
    by_function: dict[str, dict[str, Any]] = {}
    for name, info in parameters.items():
        by_function.setdefault(info.get("function", "other"), {})[name] = info
    selection_example = {
        key: prop["example"] for key, prop in parameters["selection"]["properties"].items() if "example" in prop
    }
    args = f"subject={parameters['subject']['example']!r}"
    if card.selection_required or selection_example.get("roi"):
        args += f", selection={{'roi': {selection_example.get('roi')!r}}}"
    folder = getattr(families.get_family(card.family), "folder", None) if card.family else None
    return {
        "model_id": card.model_id,
        "model_info": {
            "modality": card.modality,
            "training_dataset": card.dataset,
            "model_architecture": card.architecture,
            "creator": "BERG (Brain Encoding Response Generator)",
        },
        "description": card.description,
        "input": _input_info(card),
        "output": _output_info(card),
        "parameters": parameters,
        "parameters_by_function": by_function,
        "performance": {"accuracy_plots": [f"{folder}/encoding_models_accuracy"]} if folder else {},
        "example_usage": (
            "from berg_scale import BERG\n"
            "berg = BERG('brain-encoding-response-generator')\n"
            f"model = berg.get_encoding_model('{card.model_id}', {args})\n"
            "responses = berg.encode(model, images_uint8)"
        ),
    }


def format_description(info: dict[str, Any]) -> str:
    """The printed summary `describe` shows before returning the dict."""
    params = info["parameters"]
    lines = [
        f"Model: {info['model_id']}",
        f"  {info['model_info']['modality']} | {info['model_info']['training_dataset']}",
        f"  {info['model_info']['model_architecture']}",
        f"  subjects: {params['subject']['valid_values']}",
        f"  selection keys: {list(params['selection']['properties'])}"
        + (" (required)" if params["selection"]["required"] else " (optional)"),
        f"  input: {info['input']['description']}",
        f"  {info['description']}",
        "",
        info["example_usage"],
    ]
    return "\n".join(lines)
