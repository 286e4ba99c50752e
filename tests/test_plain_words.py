"""Every error and hint the daemon can write into an ``.error.json``, and so onto the
status page, listed and read for plain words. The list is collected from the code
(every raise of a Problem subclass, every report written by hand) and compared with
the one below, so a new message is reviewed here before it reaches anyone."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

DAEMON = REPO / "daemon"
# Command-line output, never a failure report: its messages speak to admins at a shell
# (`rules check`/`explain` and their parts; admin_queue.py answers `i2vd retry`/`cancel`).
NOT_REPORTS = {
    *("explain.py", "explain_format.py", "locate.py", "rules_check.py", "cli.py"),
    *("admin.py", "admin_text.py", "doctor.py", "admin_queue.py"),
}
# Words a person who does not program cannot act on; their place is `detail`.
JARGON = re.compile(
    r"(?i)`|\b(pillow|ffmpeg|ffprobe|errno|exception|traceback|stderr|stdout|returncode|"
    r"yuv420p|h\.264|4:2:0|dtype|float16|bfloat16|float32|cuda|nvidia-smi|pip|hf|"
    r"huggingface|hf_hub_offline|jinja|model_index\.json|oserror|valueerror|repr)\b"
)
# Values that carry a library's own words (an exception, a tool's output) go to detail.
TECHNICAL_VALUE = re.compile(r"\{[^}]*\b(exc|err|error|stderr|reason|failure|problem)\b[^}]*\}")
# In a hint, commands and names for the admin come after this phrase, never before it.
FOR_THE_ADMIN = "whoever looks after i2vd"
# Values reviewed and kept in the words, each for its reason.
REVIEWED_VALUES = {
    # file:line:column: field: what is wrong, in the person's own <stem>.yaml.
    "{problems}",
    # Jinja's own sentence about the rule's template, e.g. 'nope' is undefined.
    "{sentence}",
}

# Every (kind, message) the daemon can write as a failure report's `error`, as written
# in the code ({…}: a value filled in). Reviewed for plain words; a new one joins here.
LISTED = {
    ("BadImage", "the file is empty: nothing of the picture arrived"),
    ("BadImage", "the image data is damaged (its header cannot be read)"),
    ("BadImage", "the image data is damaged or cut short: perhaps it was only half-copied"),
    ("BadImage", "the picture is too large: more than 200 megapixels"),
    (
        "BadImage",
        "this file is not an image i2vd can open: it may be another kind of file, or damaged",
    ),
    ("Bug", "something went wrong inside i2vd itself"),
    ("CompanionProblem", "both {image.stem}.yaml and {image.stem}.yml are beside the image"),
    ("CompanionProblem", "i2vd could not read {path.name}, the text beside the image"),
    ("CompanionProblem", "the settings file beside the image has a mistake: {problems}"),
    ("CompanionProblem", "{path.name} is not plain text i2vd can read (it is not UTF-8)"),
    (
        "CompanionProblem",
        "{path.name} is too long for a prompt: larger than {MAX_TEXT_BYTES // 1024} KiB",
    ),
    ("EncoderFailed", "the video encoder failed"),
    ("EncoderFailed", "the video encoder stopped before it had every frame"),
    (
        "EngineUnavailable",
        "the AI model {source.model} has no {variant} weights variant, which the rule asks for",
    ),
    ("EngineUnavailable", "the AI model {source.model} is of a kind i2vd cannot make videos with"),
    (
        "EngineUnavailable",
        "this computer cannot make AI (diffusion) videos: their software is not installed",
    ),
    ("EngineUnavailable", "this computer lacks software that the AI model {source.model} needs"),
    ("EngineUnavailable", "this computer lacks software that {family.label} models need"),
    ("EngineUnavailable", "this rule asks for an engine i2vd does not have ({name})"),
    ("EngineUnavailable", "this rule makes AI videos but needs a model, and it names none"),
    ("ModelUnavailable", "the AI model folder {folder} is incomplete, or still being copied"),
    (
        "ModelUnavailable",
        "the AI model in {source.folder} could not be loaded: it looks incomplete or damaged",
    ),
    ("ModelUnavailable", "the AI model this rule names, {model}, is a file, not a model folder"),
    (
        "ModelUnavailable",
        "the AI model this rule uses is not on this computer: {path.resolve()} does not exist",
    ),
    (
        "ModelUnavailable",
        "the AI model {hub_id} is not on this computer yet, and i2vd is set not to download models",
    ),
    (
        "ModelUnavailable",
        "the AI model {hub_id} is not on this computer yet, and this computer cannot "
        "reach the site it is downloaded from",
    ),
    (
        "ModelUnavailable",
        "the AI model {model} is not on this computer yet, and it could not be downloaded now",
    ),
    (
        "ModelUnavailable",
        "the AI model {model} needs its licence accepted before this computer may download it",
    ),
    ("ModelUnavailable", "the AI model {model} that this rule names does not exist online"),
    ("ModelUnavailable", "the AI model {source.hub_id} could not be loaded"),
    (
        "ModelUnavailable",
        "the AI model {source.hub_id} is only partly on this computer, and the rest "
        "cannot be downloaded now",
    ),
    ("ModelUnavailable", "the AI model's description file {index} could not be read"),
    (
        "ModelUnavailable",
        "the folder of the AI model ({index.parent}) does not hold a usable model",
    ),
    (
        "OutOfMemory",
        "out of memory on {self.ctx.device} with {self.resident.source.model} even at "
        "{self.plan.width}x{self.plan.height}, {self.plan.frames} frames, the smallest "
        "this rule allows",
    ),
    ("OutOfMemory", "out of memory: the AI model {source.model} does not fit on {device}"),
    (
        "PermanentFailure",
        "i2vd stopped while making this video, {job.max_attempts} times in a row (it "
        "crashed, was stopped by force, or the computer lost power)",
    ),
    (
        "PermanentFailure",
        "the graphics card failed each time it tried to make this video, on "
        "{faults.counted} tries on a card that was otherwise working",
    ),
    ("PermanentFailure", "{job.relative} is no longer in the inbox"),
    ("PublishError", "could not access {path}"),
    ("PublishError", "no space left on the device holding {path}"),
    ("PublishError", "permission denied for {path}: i2vd may not use that folder"),
    ("PublishError", "{path} already exists: another file took its name while the video was made"),
    ("PublishError", "{path} is on a read-only filesystem: nothing can be written there"),
    ("ShareUnavailable", "a folder {job.relative} needs is unavailable"),
    (
        "TemplateProblem",
        "the rule's output name for this image is not a plain file name (it would hold "
        "a '/', a '\\' or a control character, or start with '.')",
    ),
    (
        "TemplateProblem",
        "the video's file name would be too long ({size} bytes; the limit is {NAME_LIMIT_BYTES})",
    ),
    ("TemplateProblem", "{what} template of this image's rule could not be filled in"),
    ("TemplateProblem", "{what} template of this image's rule could not be filled in: {sentence}"),
    ("VideoError", "frame {self.frames} of the video came out the wrong size"),
    ("VideoError", "no frames were made, so there is no video to save"),
    ("VideoError", "smoothing the motion between frames (frame interpolation) failed"),
    (
        "VideoError",
        "the disk holding i2vd's working folder is full (only {free // 2 ** 20} MiB free)",
    ),
    ("VideoError", "the video needs even sides, got {width}x{height}"),
    (
        "VideoError",
        "{path.name} came out as {info.width}x{info.height}, {info.frames} frames at "
        "{info.fps} fps; expected {width}x{height}, {frames} frames at {fps} fps",
    ),
    ("VideoError", "{path.name} is not a readable video: the finished file could not be checked"),
}


@dataclass(frozen=True)
class Site:
    where: str
    kind: str
    message: str
    hint: str


def _problem_classes(trees: dict[Path, ast.Module]) -> dict[str, str]:
    """Every Problem subclass in the daemon, with its default hint ('' when none)."""
    bases: dict[str, list[str]] = {}
    hints: dict[str, str] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [ast.unparse(b).split(".")[-1] for b in node.bases]
                for item in node.body:
                    if isinstance(item, ast.Assign | ast.AnnAssign) and item.value is not None:
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        if any(ast.unparse(t) == "default_hint" for t in targets):
                            hints[node.name] = _text(item.value)
    found = {"Problem": "", "RetryableProblem": ""}
    grown = True
    while grown:
        grown = False
        for name, parents in bases.items():
            if name not in found and any(p in found for p in parents):
                inherited = next(found[p] for p in parents if p in found)
                found[name] = hints.get(name, inherited)
                grown = True
    return found


def _text(node: ast.expr | None) -> str:
    """A message as written: literal text, with each value as {its expression}."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant) else "{" + _value(part) + "}"
            for part in node.values
        )
    return "{" + ast.unparse(node) + "}"


def _value(part: ast.expr) -> str:
    assert isinstance(part, ast.FormattedValue)
    return ast.unparse(part.value)


def sites(root: Path = DAEMON) -> list[Site]:
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(root.rglob("*.py"))
        if path.name not in NOT_REPORTS
    }
    classes = _problem_classes(trees)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                kind = ast.unparse(node.func).split(".")[-1]
                if kind not in classes or kind in ("Problem", "RetryableProblem"):
                    continue
                words = {k.arg: k.value for k in node.keywords}
                message = node.args[0] if node.args else words.get("message")
                hint = node.args[1] if len(node.args) > 1 else words.get("hint")
                found.append(
                    Site(
                        f"{where}:{node.lineno}",
                        kind,
                        _text(message),
                        _text(hint) if hint is not None else classes[kind],
                    )
                )
            elif isinstance(node, ast.Dict):
                # A report written by hand: its literal error and hint.
                entries = {
                    k.value: v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant | ast.JoinedStr)
                }
                if "error" in entries:
                    found.append(
                        Site(
                            f"{where}:{node.lineno}",
                            "report",
                            _text(entries["error"]),
                            _text(entries.get("hint")),
                        )
                    )
    return found


def test_every_message_is_listed() -> None:
    found = {(site.kind, site.message) for site in sites()}
    assert found - LISTED == set(), "new messages: review their words, then list them"
    assert LISTED - found == set(), "messages gone from the code: remove them from the list"


def test_errors_are_plain_words_with_a_next_step() -> None:
    for site in sites():
        words = site.message
        for value in REVIEWED_VALUES:
            words = words.replace(value, "")
        assert words.strip(), site
        assert not JARGON.search(words), (site, JARGON.search(words))
        assert not TECHNICAL_VALUE.search(words), (site, "technical value: put it in detail")
        assert site.hint.strip(), (site, "every failure says what to do next")
        plain_part = site.hint.split(FOR_THE_ADMIN, 1)[0]
        assert not JARGON.search(plain_part), (site, "commands go after " + FOR_THE_ADMIN)
        assert not TECHNICAL_VALUE.search(site.hint), site


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The collector sees raises, keyword hints, inherited default hints and reports
    written by hand; the checks refuse a library's words."""
    (tmp_path / "m.py").write_text(
        "from .problems import Problem\n"
        "class Odd(Problem):\n"
        "    default_hint = 'try again'\n"
        "def f(exc):\n"
        "    raise Odd(f'ffmpeg said {exc}')\n"
        "def g():\n"
        "    return {'error': 'gone', 'hint': 'drop it again'}\n"
    )
    found = {(s.kind, s.message, s.hint) for s in sites(tmp_path)}
    assert found == {("Odd", "ffmpeg said {exc}", "try again"), ("report", "gone", "drop it again")}
    assert JARGON.search("ffmpeg said") and TECHNICAL_VALUE.search("said {exc}")
