"""--ipalloc-init as Weave's weaver reads it: the quorum, the seeds, or an observer; nonsense named."""
import pytest

from weavepy.launch_config import ConfigError, LaunchConfig

A, B = "02:00:00:00:00:01", "0A:00:00:00:00:02"


def bootstrap(spec, targets=0):
    return LaunchConfig(ipalloc_init=spec).ipam_bootstrap(targets)


@pytest.mark.parametrize("spec, targets, want", [
    (None, 0, (1, [], False)),            # launched alone: agrees with itself at once
    (None, 1, (2, [], False)),            # `launch H1`: both must agree
    (None, 4, (3, [], False)),            # a majority of five
    ("consensus=3", 0, (2, [], False)),
    (f"seed={B},{A}", 0, (1, [A, B.lower()], False)),
    ("observer", 5, (1, [], True)),
    ("seed=::1,::2", 0, (1, ["00:00:00:00:00:01", "00:00:00:00:00:02"], False)),   # as --name takes them
])
def test_modes(spec, targets, want):
    quorum, seeds, observer = bootstrap(spec, targets)
    assert (quorum, sorted(seeds), observer) == (want[0], sorted(want[1]), want[2])


@pytest.mark.parametrize("spec", ["nonsense", "consensus=0", "consensus=x", "seed=", "seed=host1", "seed=::1,::g",
                                  "observer=1"])
def test_nonsense_is_refused_naming_what_was_given(spec):
    with pytest.raises(ConfigError, match="Unable to parse --ipalloc-init") as err:
        LaunchConfig(ipalloc_init=spec).validate()
    assert repr(spec) in str(err.value)
