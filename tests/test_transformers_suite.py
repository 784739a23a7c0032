"""transformers' own common model tests (ModelTesterMixin, from the sdist of the installed
release) on tiny LLaMA, Qwen2 and Gemma models, run twice in this process: unpatched, then
with every model that the tests build patched by glu_fused.integrations.transformers (at the
end of its post_init). Every mixin test that passes unpatched must pass patched, the patch
must have run (MLPs patched, every model built patched, the fused MLP forward called; never
called unpatched), and the counts of passed/failed/skipped of both runs are printed
(pytest -rP or -s shows them).

tests/hf_suite.py obtains the tests (pip download of the sdist into ~/.cache/glu_fused, once
per version), holds the model tester and the suite classes, and runs them. Where the sdist
cannot be had (no network, no pip, a timeout, a release not on PyPI), this module skips with
the reason.

What runs: every test of the mixin, 162 for transformers 5.25.0, of which about 55 skip on a
CPU-only host (accelerators, flash attention, deepspeed, composite or MoE models, the
generation-mixin check); the export and generation mixins themselves are not in the sdist
and do not run. The whole set takes about 20 s a family for both runs (about a minute for
the three, torch on one thread), within this module's budget, so no subset is chosen;
$GLU_FUSED_HF_TESTS, a regular expression, narrows it to the tests whose names it matches
(while debugging).

What it catches: what the mixin checks of a model, with the patched MLP inside it: shapes,
dtypes (float16 and bfloat16 through the fused op), gradients reaching every weight
(gradient checkpointing, reentrant or not), save/load, meta-device construction, and the
consistency of outputs (batched against row by row, eager against SDPA, tuples against
dicts). Not the values against transformers' own MLP: at the mixin's initialisation (std
0.02) the MLP adds little to the hidden states, and an MLP output with its batch rows
swapped still passes here. tests/test_transformers.py compares the values.
"""

from __future__ import annotations

import os
import re

import hf_suite
import pytest

pytest.importorskip(
    "transformers",
    reason="the Hugging Face integration is tested with transformers installed "
    "(pip install transformers, or the 'hf' extra)",
)

ONLY = os.environ.get("GLU_FUSED_HF_TESTS")


@pytest.fixture(scope="module")
def upstream():
    """The mixin's module; obtained when a test runs (a download where the cache has none),
    not at collection, so that collecting the suite never waits on the network."""
    try:
        hf_suite.obtain()
    except hf_suite.Unavailable as why:
        pytest.skip(f"transformers' own tests are not at hand: {why}")
    try:
        return hf_suite.upstream()
    except hf_suite.Unavailable as why:
        pytest.skip(f"transformers' own tests do not import: {why}")


def _selected(family: str) -> list[str]:
    names = hf_suite.mixin_test_names(family)
    if ONLY:
        names = [name for name in names if re.search(ONLY, name)]
        assert names, f"$GLU_FUSED_HF_TESTS={ONLY!r} matches none of the mixin's tests"
    return names


def _failures(run: hf_suite.Run, names) -> str:
    return "\n".join(
        f"--- {name}\n{run.details.get(name, '(no traceback)')[-3000:]}" for name in sorted(names)
    )


@pytest.mark.parametrize("family", list(hf_suite.FAMILIES))
def test_what_passes_unpatched_passes_patched(family, upstream, record_property):
    names = _selected(family)
    plain = hf_suite.run(family, patched=False, names=names)
    patched = hf_suite.run(family, patched=True, names=names)
    for run in (plain, patched):
        print(run.summary())
        for outcome in hf_suite.OUTCOMES:
            what = "patched" if run.patched else "unpatched"
            record_property(f"{what}_{outcome}", len(run.names(outcome)))

    assert len(plain.outcomes) == len(patched.outcomes) == len(names)
    assert plain.names("passed"), f"no test passed unpatched:\n{_failures(plain, names)}"
    broken = plain.names("passed") - patched.names("passed")
    assert not broken, (
        f"{len(broken)} of transformers' tests pass unpatched and not patched:\n"
        + _failures(patched, broken)
    )

    assert plain.counts.forward_calls == 0, "the unpatched run called the fused MLP forward"
    counts = patched.counts
    # Every model constructed went through post_init and came out of it patched.
    assert counts.inits > 0, patched.summary()
    assert counts.inits == counts.models == counts.patched_models, patched.summary()
    assert counts.mlps > 0 and counts.forward_calls > 0, patched.summary()
    assert counts.mlp_classes == {hf_suite.FAMILIES[family].mlp}, counts.mlp_classes
    # A test whose every model ran a forward ran the fused one, wherever it passed.
    ran = [n for n in ("test_determinism", "test_training") if n in patched.names("passed")]
    assert all(patched.calls[n] > 0 for n in ran), {n: patched.calls[n] for n in ran}
