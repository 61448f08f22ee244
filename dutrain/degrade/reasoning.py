"""The `<think>` text: measured cues and what they imply for the annotated chain (design §5:
docs/design.md).

One sentence lists the core cues measured on this image (`stated_cues`); a second names, for each
degradation of the chain in stage order, the cues that reveal it (or, for a clean image, says none
is implied). With the measurement tool in the prompt (`prompt: cues`, docs/sft.md) the cue
sentence travels in the user turn (`tool_line`) and the reasoning keeps only the second part
(`write_reasoning(..., state_cues=False)`).
The vocabulary is fixed and numbers carry 1-2 decimals, so a tiny model can learn to emit it;
two images with the same annotation differ in their numbers.
"""

from __future__ import annotations

from typing import Any, Mapping

from dutrain.schema import canonicalize

# (cue, label, decimals, unit) in the order they are stated
_CORE = (("hf_energy", "HF energy", 1, ""), ("edge_width", "edge width", 1, " px"),
         ("noise", "noise", 1, ""), ("blockiness", "8x8 blockiness", 2, ""),
         ("dark_channel", "dark channel", 2, ""), ("brightness", "brightness", 2, ""))

# type -> (implying cues, phrase)
_EVIDENCE: dict[str, tuple[tuple[str, ...], str]] = {
    "haze": (("dark_channel", "haze_gradient"), "haze"),
    "rain": (("streaks",), "rain streaks"),
    "gaussian_blur": (("edge_width", "hf_energy"), "gaussian blur"),
    "motion_blur": (("edge_width", "hf_energy"), "motion blur"),
    "defocus_blur": (("edge_width", "hf_energy"), "defocus blur"),
    "low_light": (("brightness",), "low light"),
    "downsample": (("edge_width", "hf_energy"), "downsampling"),
    "gaussian_noise": (("noise",), "gaussian noise"),
    "poisson_noise": (("noise", "brightness"), "poisson noise"),
    "jpeg": (("blockiness",), "jpeg compression"),
}
_EXTRA = {"haze_gradient": ("top-bottom haze gradient", 2, ""),
          "streaks": ("bright streak share", 1, "%")}
_LABELS = {c: (label, dec, unit) for c, label, dec, unit in _CORE} | _EXTRA


def _num(value: float, decimals: int) -> str:
    s = f"{float(value):.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.00"


def _cue(cues: Mapping[str, float], name: str) -> str:
    label, dec, unit = _LABELS[name]
    return f"{label} {_num(cues[name], dec)}{unit}"


def _check(cues: Mapping[str, float], needed: set[str]) -> None:
    missing = sorted(needed - set(cues))
    if missing:
        raise ValueError(f"cues lack {missing}; measure them with dutrain.degrade.measure_cues")


def stated_cues(cues: Mapping[str, float]) -> str:
    """The sentence stating the core cues: "Cues: HF energy 12.3, edge width 1.4 px, …"."""
    _check(cues, {c for c, *_ in _CORE})
    return "Cues: " + ", ".join(_cue(cues, c) for c, *_ in _CORE) + "."


#: what starts the user turn's extra line in `prompt: cues` mode
TOOL_PREFIX = "Measured by the tool: "


def tool_line(cues: Mapping[str, float]) -> str:
    """The measurement tool's line in the prompt (`prompt: cues`): the same sentence that
    `write_reasoning` states in plain mode, so the two never drift."""
    return TOOL_PREFIX + stated_cues(cues)


def write_reasoning(cues: Mapping[str, float], annotation: Any, state_cues: bool = True) -> str:
    """Deterministic reasoning text for `annotation` citing the numbers in `cues`.

    `state_cues=False` (the cues are in the prompt): the evidence part alone, without the
    `stated_cues` sentence.
    """
    ann = canonicalize(annotation)
    needed = ({c for c, *_ in _CORE}
              | {c for d in ann["degradations"] for c in _EVIDENCE[d["type"]][0]})
    _check(cues, needed)
    if not state_cues:
        if not ann["degradations"]:
            return "None of the measured cues implies a degradation: clean."
        return _evidence(cues, ann)
    stated = stated_cues(cues)
    if not ann["degradations"]:
        return stated + " None of them implies a degradation: clean."
    return f"{stated} {_evidence(cues, ann)}"


def _evidence(cues: Mapping[str, float], ann: Mapping[str, Any]) -> str:
    parts = []
    for d in ann["degradations"]:
        names, phrase = _EVIDENCE[d["type"]]
        extra = [n for n in names if n in _EXTRA]
        core = [n for n in names if n not in _EXTRA]
        cited = " and ".join([_LABELS[n][0] for n in core] + [_cue(cues, n) for n in extra])
        parts.append(f"{cited} {'imply' if len(names) > 1 else 'implies'} {phrase}")
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}."
