"""transformers' own common model tests (ModelTesterMixin) on tiny LLaMA, Qwen2 and Gemma
models, run unpatched and with every model they build patched by glu_fused's integration
(tests/test_transformers_suite.py asserts on what this runs).

transformers ships its test suite only in its source distribution, and there only the common
modules (tests/test_modeling_common.py...), not tests/models/ nor tests/causal_lm_tester.py.
`obtain()` downloads the sdist of the installed release with pip into a cache
(``$XDG_CACHE_HOME/glu_fused`` or ``~/.cache/glu_fused``, one folder per version, reused),
extracts test_modeling_common.py into a package of its own name (``glu_fused_hf_upstream``,
which never meets our tests/conftest.py) and puts it on sys.path. It also stubs the two
modules that test_modeling_common imports and the sdist lacks (tests/exporters/test_export.py,
tests/generation/test_utils.py: their mixins are not run) and provides ``parameterized``
(pip download of its wheel into the same cache where it is not installed).
``$GLU_FUSED_HF_SDIST`` names an sdist to use instead of downloading one.

`run(family, patched, names)` runs the mixin's tests on one family's suite class in this
process, through unittest, and returns each test's outcome. Patched, every PreTrainedModel
built in the run is given ``glu_hf.patch(model)`` at the end of its ``post_init`` (which
every model's ``__init__`` ends with: ``model_class(config)``, ``from_pretrained``,
``from_config``...), and the patched MLP forward is counted on each call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
import warnings
import weakref
from pathlib import Path

PACKAGE = "glu_fused_hf_upstream"  # the extracted tests/ of transformers, under this name
NEEDED = ("test_modeling_common.py",)  # the files of transformers' tests/ that are extracted
# Modules that test_modeling_common imports and the sdist does not carry: their mixins.
STUBS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}
PARAMETERIZED = "parameterized==0.9.0"
DOWNLOAD_TIMEOUT_S = float(os.environ.get("GLU_FUSED_HF_DOWNLOAD_TIMEOUT", "120"))


class Unavailable(Exception):
    """transformers' tests cannot be had here: the reason to skip with."""


# ---- obtaining transformers' tests --------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glu_fused"


def _pip_download(args: list[str], into: Path, what: str) -> Path:
    """pip download `args` into a fresh folder beside `into`, and returns the one file it got."""
    into.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=into, prefix=".download-"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(scratch)]
    command += ["--timeout", "20", "--retries", "1", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
        files = list(scratch.iterdir())
        if done.returncode != 0 or len(files) != 1:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise Unavailable(
                f"pip download {what} failed (exit {done.returncode}): {lines[-1][:300]}"
            )
        target = into / files[0].name
        os.replace(files[0], target)  # atomic: a concurrent run sees it whole or not at all
        return target
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip download {what} took over {DOWNLOAD_TIMEOUT_S:g} s") from None
    except OSError as error:
        raise Unavailable(f"pip download {what}: {error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sdist(version: str, folder: Path) -> Path:
    given = os.environ.get("GLU_FUSED_HF_SDIST")
    if given:
        path = Path(given)
        if path.name != f"transformers-{version}.tar.gz":
            raise Unavailable(f"$GLU_FUSED_HF_SDIST is {path.name}, not transformers {version}'s")
        if not path.is_file():
            raise Unavailable(f"$GLU_FUSED_HF_SDIST: no file {path}")
        return path
    path = folder / f"transformers-{version}.tar.gz"
    if path.is_file():
        return path
    got = _pip_download(
        ["--no-binary", ":all:", f"transformers=={version}"], folder, f"transformers=={version}"
    )
    if got.name != path.name:
        got.unlink(missing_ok=True)
        raise Unavailable(f"pip download transformers=={version} gave {got.name}")
    return path


def _extract(sdist: Path, version: str, root: Path) -> None:
    """transformers' NEEDED test files, and the STUBS, as the package PACKAGE under `root`
    (built aside, then renamed into place: whole or absent)."""
    package = root / PACKAGE
    if (package / "__init__.py").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    scratch.chmod(0o755)
    try:
        with tarfile.open(sdist) as tar:
            for name in NEEDED:
                member = f"transformers-{version}/tests/{name}"
                try:
                    source = tar.extractfile(member)
                except KeyError:
                    raise Unavailable(f"{sdist.name} has no {member}") from None
                (scratch / name).write_bytes(source.read())
        for name, text in STUBS.items():
            path = scratch / name
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(text)
        (scratch / "__init__.py").write_text(f'"""transformers {version}\'s tests/ (part)."""\n')
        try:
            os.rename(scratch, package)
        except OSError:  # another run put it there first
            if not (package / "__init__.py").is_file():
                raise
    except (tarfile.TarError, OSError) as error:
        raise Unavailable(f"cannot extract transformers' tests from {sdist}: {error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _parameterized(folder: Path) -> None:
    """test_modeling_common needs `parameterized`: the installed one, or its wheel (pure
    Python, importable from the zip) downloaded into the cache."""
    try:
        importlib.import_module("parameterized")
        return
    except ImportError:
        pass
    wheels = sorted(folder.glob("parameterized-*.whl"))
    wheel = wheels[-1] if wheels else _pip_download([PARAMETERIZED], folder, PARAMETERIZED)
    sys.path.append(str(wheel))
    try:
        importlib.import_module("parameterized")
    except ImportError as error:
        raise Unavailable(f"parameterized from {wheel.name}: {error}") from None


@functools.cache
def obtain() -> Path:
    """The folder that holds PACKAGE, transformers' tests of the installed release (their
    sdist downloaded and extracted where the cache has none yet), and `parameterized`
    importable. Raises Unavailable where they cannot be had."""
    try:
        import transformers
    except ImportError:
        raise Unavailable("transformers is not installed") from None
    version = transformers.__version__
    folder = cache_root() / f"transformers-{version}"
    root = folder / "tests"
    if not (root / PACKAGE / "__init__.py").is_file():
        _extract(_sdist(version, folder), version, root)
    _parameterized(folder)
    return root


@functools.cache
def upstream():
    """transformers' tests/test_modeling_common.py of the installed release, as a module
    (a few seconds: it imports much of transformers). Raises Unavailable where it cannot be
    had."""
    root = obtain()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():  # its marks (slow, flash_attn_test...) are not ours
            warnings.filterwarnings("ignore", message="Unknown pytest.mark")
            return importlib.import_module(f"{PACKAGE}.test_modeling_common")
    except ImportError as error:
        raise Unavailable(f"transformers' test_modeling_common: {error}") from None


# ---- the model testers and suite classes ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    config: str  # the config class's name in transformers
    models: tuple[str, ...]  # the model classes tested (all_model_classes), base model first
    mlp: str  # the MLP class that patch replaces the forward of
    hidden_act: str


FAMILIES = {
    "llama": Family(
        "LlamaConfig",
        (
            "LlamaModel",
            "LlamaForCausalLM",
            "LlamaForSequenceClassification",
            "LlamaForQuestionAnswering",
            "LlamaForTokenClassification",
        ),
        "LlamaMLP",
        "silu",
    ),
    "qwen2": Family(
        "Qwen2Config",
        (
            "Qwen2Model",
            "Qwen2ForCausalLM",
            "Qwen2ForSequenceClassification",
            "Qwen2ForQuestionAnswering",
            "Qwen2ForTokenClassification",
        ),
        "Qwen2MLP",
        "silu",
    ),
    "gemma": Family(
        "GemmaConfig",
        (
            "GemmaModel",
            "GemmaForCausalLM",
            "GemmaForSequenceClassification",
            "GemmaForTokenClassification",
        ),
        "GemmaMLP",
        "gelu_pytorch_tanh",
    ),
}


class TinyCausalLMTester:
    """What ModelTesterMixin asks of `self.model_tester`, for a decoder-only LM built from
    `config_class` (as transformers' own testers of LLaMA-like models give it): a tiny
    config, and input ids with an attention mask."""

    def __init__(self, parent: unittest.TestCase, family: Family):
        import transformers

        self.parent = parent
        self.config_class = getattr(transformers, family.config)
        self.hidden_act = family.hidden_act
        self.batch_size = 13
        self.seq_length = 7
        self.is_training = True
        self.use_input_mask = True
        self.use_labels = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 2
        self.num_key_value_heads = 2
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.intermediate_size = 37  # odd: not a multiple of any kernel's vector width
        self.max_position_embeddings = 512
        self.initializer_range = 0.02
        self.type_sequence_label_size = 2
        self.num_labels = 3
        self.num_choices = 4
        self.pad_token_id = 0
        self.bos_token_id = 1
        self.eos_token_id = 2

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self):
        import torch

        common = upstream()
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)) if self.use_input_mask else None
        sequence_labels = token_labels = choice_labels = None
        if self.use_labels:
            sequence_labels = common.ids_tensor([self.batch_size], self.type_sequence_label_size)
            token_labels = common.ids_tensor([self.batch_size, self.seq_length], self.num_labels)
            choice_labels = common.ids_tensor([self.batch_size], self.num_choices)
        return (
            self.get_config(),
            input_ids,
            input_mask,
            sequence_labels,
            token_labels,
            choice_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, *_ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


@functools.cache
def suite_class(family: str) -> type[unittest.TestCase]:
    """`class <Family>Suite(ModelTesterMixin, unittest.TestCase)` over the family's model
    classes. Not collected by pytest (`__test__ = False`): run through `run`."""
    import transformers

    common = upstream()
    spec = FAMILIES[family]

    class Suite(common.ModelTesterMixin, unittest.TestCase):
        __test__ = False
        all_model_classes = tuple(getattr(transformers, name) for name in spec.models)

        def setUp(self):
            transformers.set_seed(0)  # both runs draw the same inputs and weights
            self.model_tester = TinyCausalLMTester(self, spec)

        def test_generation_tester_mixin_inheritance(self):
            self.skipTest("GenerationTesterMixin (tests/generation/) is not in the sdist")

    name = spec.config.removesuffix("Config") + "Suite"
    Suite.__name__ = Suite.__qualname__ = name
    return Suite


def mixin_test_names(family: str) -> list[str]:
    """Every test of the family's suite class (the mixin's, parameterized ones expanded)."""
    return list(unittest.TestLoader().getTestCaseNames(suite_class(family)))


# ---- running them, unpatched and patched ---------------------------------------------------


@dataclasses.dataclass
class PatchCounts:
    inits: int = 0  # PreTrainedModel.__init__ calls: the models that the tests construct
    models: int = 0  # of those, the models whose post_init ran (once or more)
    patched_models: int = 0  # of those, models with patched MLPs once patch had run
    without_mlp: int = 0  # models with no GLU MLP (patch refused them: nothing to do)
    mlps: int = 0  # MLPs patched (patch's return values, summed)
    mlp_classes: set[str] = dataclasses.field(default_factory=set)  # their class names
    forward_calls: int = 0  # calls of glu_hf's fused MLP forward


@contextlib.contextmanager
def instrumented(counts: PatchCounts, patch: bool):
    """Counts the models built inside and the calls of glu_hf's fused MLP forward (as patch
    installs it: patch looks the function up at each call); where `patch`, every
    PreTrainedModel built inside gets glu_hf.patch at the end of its post_init."""
    from transformers import PreTrainedModel

    from glu_fused.integrations import transformers as glu_hf

    real_init = PreTrainedModel.__init__
    real_post_init = PreTrainedModel.post_init
    real_forward = glu_hf._fused_mlp_forward

    @functools.wraps(real_forward)  # the same __module__ and __qualname__: pickles by name
    def counted_forward(self, x):
        counts.forward_calls += 1
        return real_forward(self, x)

    @functools.wraps(real_init)
    def init(self, *args, **kwargs):
        counts.inits += 1
        real_init(self, *args, **kwargs)

    seen = weakref.WeakSet()

    @functools.wraps(real_post_init)
    def post_init(self, *args, **kwargs):
        real_post_init(self, *args, **kwargs)
        if self in seen:  # post_init called again on a model: patched already
            return
        seen.add(self)
        counts.models += 1
        if not patch:
            return
        try:
            counts.mlps += glu_hf.patch(self)
        except ValueError as error:
            if "has no GLU MLP" not in str(error):
                raise
            counts.without_mlp += 1
        patched = [type(m).__name__ for m in self.modules() if glu_hf.is_patched(m)]
        counts.patched_models += bool(patched)
        counts.mlp_classes.update(patched)

    glu_hf._fused_mlp_forward = counted_forward
    PreTrainedModel.__init__ = init
    PreTrainedModel.post_init = post_init
    try:
        yield counts
    finally:
        PreTrainedModel.__init__ = real_init
        PreTrainedModel.post_init = real_post_init
        glu_hf._fused_mlp_forward = real_forward


OUTCOMES = ("passed", "failed", "skipped")


class _Result(unittest.TestResult):
    """Each test's outcome: passed, failed (a failure or an error, in any of its subtests)
    or skipped (a skipTest, in any subtest, without a failure), with the traceback of a
    failure and the reason of a skip."""

    def __init__(self, counts: PatchCounts):
        super().__init__()
        self.counts = counts
        self.calls: dict[str, int] = {}  # test name: calls of the fused MLP forward
        self.outcomes: dict[str, str] = {}
        self.details: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self._start = 0.0

    @staticmethod
    def _name(test) -> str:
        test = getattr(test, "test_case", test)  # a subTest's: its test's
        return test._testMethodName

    def startTest(self, test):
        super().startTest(test)
        self._start = time.perf_counter()
        self._calls = self.counts.forward_calls

    def stopTest(self, test):
        super().stopTest(test)
        name = self._name(test)
        self.seconds[name] = time.perf_counter() - self._start
        self.calls[name] = self.counts.forward_calls - self._calls

    def _set(self, test, outcome, detail=""):
        name = self._name(test)
        if self.outcomes.get(name) == "failed":  # an error in tearDown after a failure
            return
        self.outcomes[name] = outcome
        if detail:
            self.details[name] = detail

    def addSuccess(self, test):
        self._set(test, "passed")

    def addFailure(self, test, err):
        self._set(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        self._set(test, "failed", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._set(test, "skipped", reason)

    def addExpectedFailure(self, test, err):
        self._set(test, "skipped", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._set(test, "failed", "unexpected success")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            self._set(test, "failed", self._exc_info_to_string(err, test))


@dataclasses.dataclass
class Run:
    family: str
    patched: bool
    outcomes: dict[str, str]  # test name: passed, failed or skipped
    details: dict[str, str]  # test name: traceback of a failure, reason of a skip
    seconds: dict[str, float]
    calls: dict[str, int]  # test name: calls of the fused MLP forward
    counts: PatchCounts
    wall_s: float

    def names(self, outcome: str) -> set[str]:
        return {name for name, got in self.outcomes.items() if got == outcome}

    def summary(self) -> str:
        line = ", ".join(f"{len(self.names(o))} {o}" for o in OUTCOMES)
        what = "patched" if self.patched else "unpatched"
        line = f"{self.family} {what}: {line} ({self.wall_s:.1f} s)"
        c = self.counts
        line += f"; {c.inits} models built, {c.models} of them through post_init"
        if self.patched:
            line += (
                f", {c.patched_models} of them patched, {c.mlps} MLPs patched "
                f"({', '.join(sorted(c.mlp_classes))}), {c.without_mlp} without a GLU MLP"
            )
        return line + f", {c.forward_calls} calls of the fused MLP forward"


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own log handler (load reports...) writes aside; the loggers' levels
    stay as they are, as tests capture the records (CaptureLogger)."""
    import logging

    from transformers.utils import logging as hf_logging

    handlers = [
        h
        for h in hf_logging.get_logger().handlers  # the library's root logger
        if isinstance(h, logging.StreamHandler)
    ]
    streams = [h.setStream(io.StringIO()) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)


@contextlib.contextmanager
def _one_thread():
    """torch on one thread: tiny models gain nothing from more, and on a shared host the
    OpenMP threads' waits cost more than the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(family: str, patched: bool, names: list[str] | None = None) -> Run:
    """Runs the family's suite (the tests `names`, all where None) in this process."""
    cls = suite_class(family)
    names = mixin_test_names(family) if names is None else names
    suite = unittest.TestSuite(cls(name) for name in names)
    counts = PatchCounts()
    result = _Result(counts)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(instrumented(counts, patch=patched))
        # Python's default filters, whatever pytest's are: some tests record warnings.
        stack.enter_context(warnings.catch_warnings())
        warnings.resetwarnings()
        warnings.simplefilter("default")
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        stack.enter_context(_quiet_transformers())
        stack.enter_context(_one_thread())
        suite.run(result)
    wall = time.perf_counter() - start
    return Run(
        family, patched, result.outcomes, result.details, result.seconds, result.calls, counts, wall
    )
