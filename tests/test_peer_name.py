import pytest

from weavepy.mesh import peer_name


def test_parse_forms():
    assert peer_name.parse("12:34:56:78:9A:bc") == "12:34:56:78:9a:bc"
    assert peer_name.parse("::1") == "00:00:00:00:00:01"
    assert peer_name.parse("ab::1") == "ab:00:00:00:00:01"
    for bad in ("12:34", "zz:00:00:00:00:00", "1:2:3:4:5:6:7", ""):
        with pytest.raises(peer_name.PeerNameError):
            peer_name.parse(bad)


def _machine(root, machine_id):
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "machine-id").write_text(machine_id)
    return str(root)


def test_derived_name_is_stable_and_differs_between_machines(tmp_path):
    a = peer_name.derive(_machine(tmp_path / "a", "aaaa\n"))
    again = peer_name.derive(str(tmp_path / "a"))
    b = peer_name.derive(_machine(tmp_path / "b", "bbbb\n"))
    assert a == again and a != b
    first = int(a.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered
