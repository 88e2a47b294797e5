"""`nb.cluster.expand_hostlist` (Slurm's host list syntax) and the parsing of cluster specs."""

from __future__ import annotations

import pytest
from numbeam.cluster._strategies import Dns, HostsFile, Static, parse_spec

import numbeam as nb

# Cases from Slurm's documentation (scontrol(1) "show hostnames", sbatch(1) --nodelist, the
# "Node Name" section of slurm.conf(5)) and from its hostlist.c: the expansion that
# `scontrol show hostnames LIST` prints, in its order.
SLURM_CASES = [
    ("tux[1-3]", ["tux1", "tux2", "tux3"]),
    ("lx[10-20]", [f"lx{n}" for n in range(10, 21)]),
    ("lx[15,18,32-33]", ["lx15", "lx18", "lx32", "lx33"]),
    ("linux[0-64,128]", [f"linux{n}" for n in range(65)] + ["linux128"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("node[08-11]", ["node08", "node09", "node10", "node11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[0-1]_blade[0-2]", [f"rack{r}_blade{b}" for r in range(2) for b in range(3)]),
    ("dev[0-1],adev[0-1]", ["dev0", "dev1", "adev0", "adev1"]),
    ("alpha,beta,gamma", ["alpha", "beta", "gamma"]),
    ("snowflake", ["snowflake"]),
    ("tux[5]", ["tux5"]),
    ("a[1-2]-b[1-2],c", ["a1-b1", "a1-b2", "a2-b1", "a2-b2", "c"]),
    ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ("[1-2]x", ["1x", "2x"]),
    ("gpu[1-2], cpu3", ["gpu1", "gpu2", "cpu3"]),  # whitespace is ignored
    ("", []),
]


@pytest.mark.parametrize(("hostlist", "hosts"), SLURM_CASES)
def test_expand_hostlist_as_slurm_does(hostlist: str, hosts: list[str]) -> None:
    assert nb.cluster.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    ("hostlist", "complaint"),
    [
        ("gpu[01-04", r"'\[' without '\]'"),
        ("gpu01]", r"'\]' without '\['"),
        ("gpu[[1-2]]", "nested"),
        ("gpu[a-b]", "not a number or a lo-hi range"),
        ("gpu[]", "not a number or a lo-hi range"),
        ("gpu[1-]", "not a number or a lo-hi range"),
        ("gpu[4-1]", "goes down"),
        ("a,,b", "empty host"),
        ("gpu[0-99999999]", "too large"),
    ],
)
def test_a_malformed_hostlist_is_a_value_error_saying_what_is_wrong(
    hostlist: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint) as e:
        nb.cluster.expand_hostlist(hostlist)
    assert repr(hostlist) in str(e.value)


def test_expand_hostlist_takes_a_str() -> None:
    with pytest.raises(TypeError, match="expand_hostlist"):
        nb.cluster.expand_hostlist(["gpu01"])  # type: ignore[arg-type]


ME = "n@10.0.0.1:9100"


def test_static_spec_names_the_nodes() -> None:
    s = parse_spec("static:a@10.0.0.2:9100, b@10.0.0.3:9101", ME)
    assert isinstance(s, Static)
    assert s.names == {"a@10.0.0.2:9100", "b@10.0.0.3:9101"}


def test_file_and_dns_specs() -> None:
    f = parse_spec("file:/etc/numbeam/hosts", ME, interval=0.5)
    assert isinstance(f, HostsFile) and str(f.path) == "/etc/numbeam/hosts"
    assert f.interval == 0.5
    d = parse_spec("dns:numbeam.default.svc.cluster.local:9100", ME)
    assert isinstance(d, Dns)
    assert (d.name, d.port, d.basename) == ("numbeam.default.svc.cluster.local", 9100, "n")
    other = parse_spec("dns:worker@numbeam:9200", ME)
    assert isinstance(other, Dns) and (other.basename, other.port) == ("worker", 9200)


def test_slurm_spec_expands_the_job_nodelist_on_this_nodes_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02],cpu7")
    s = parse_spec("slurm", "n@gpu01:9100")
    assert isinstance(s, Static)
    assert s.names == {"n@gpu01:9100", "n@gpu02:9100", "n@cpu7:9100"}
    assert parse_spec("slurm:9200", "n@gpu01:9100").names == {  # type: ignore[attr-defined]
        "n@gpu01:9200",
        "n@gpu02:9200",
        "n@cpu7:9200",
    }


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("static:", "needs node names"),
        ("static:a@h", "bad cluster spec"),
        ("file:", "needs a path"),
        ("dns:numbeam", "expected 'dns:NAME:PORT'"),
        ("dns:numbeam:http", "not a port number"),
        ("dns:numbeam:70000", "not a port number"),
        ("dns:bad name!:9100", "not a DNS name"),
        ("dns:numbeam:9100 nameserver=x", "not a port number"),
        ("gossip:224.0.0.1", "expected static:NAMES, file:PATH, dns:NAME:PORT or slurm"),
        ("slurm", "SLURM_JOB_NODELIST is not set"),
    ],
)
def test_a_malformed_spec_is_a_value_error(
    spec: str, complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(ValueError, match=complaint):
        parse_spec(spec, ME)


def test_a_dns_spec_with_a_nameserver(monkeypatch: pytest.MonkeyPatch) -> None:
    d = parse_spec("dns:numbeam:9100", ME, nameserver="[::1]:5353")
    assert isinstance(d, Dns) and d.nameserver == ("::1", 5353)
    monkeypatch.setenv("NUMBEAM_DNS_NAMESERVER", "10.0.0.53:53")
    d = parse_spec("dns:numbeam:9100", ME)
    assert isinstance(d, Dns) and d.nameserver == ("10.0.0.53", 53)
    monkeypatch.setenv("NUMBEAM_DNS_NAMESERVER", "")
    d = parse_spec("dns:numbeam:9100", ME)
    assert isinstance(d, Dns) and d.nameserver is None  # the system's resolver
    with pytest.raises(ValueError, match="bad DNS nameserver 'ns1'"):
        parse_spec("dns:numbeam:9100", ME, nameserver="ns1")


def test_a_bad_interval_or_spec_type() -> None:
    with pytest.raises(ValueError, match="interval"):
        parse_spec("static:a@h:1", ME, interval=0)
    with pytest.raises(TypeError, match="cluster spec must be a str"):
        parse_spec(None, ME)  # type: ignore[arg-type]


async def test_join_needs_a_named_node() -> None:
    async with nb.Runtime():
        with pytest.raises(RuntimeError, match="local"):
            nb.cluster.join("static:a@127.0.0.1:9")
