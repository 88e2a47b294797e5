"""The deployment recipes of deploy/, checked as far as a machine without Kubernetes or Slurm
allows: the manifest parsed and its fields cross-checked (the node command line against the
real `numbeam node` parser and cluster spec parser), the sbatch script run with stand-ins for
`srun` and `numbeam` that record the command line each task would run."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from numbeam.cluster._strategies import Dns, Static, parse_spec

import numbeam as nb
from numbeam.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes" / "numbeam.yaml"
SBATCH = ROOT / "deploy" / "slurm" / "numbeam.sbatch"


def _manifest() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    return {d["kind"]: d for d in docs}


def _node_options(capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The options `numbeam node` takes, from its own --help."""
    with pytest.raises(SystemExit):
        main(["node", "--help"])
    return set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out))


def test_kubernetes_manifest_is_a_headless_service_and_a_statefulset() -> None:
    kinds = _manifest()
    assert set(kinds) == {"Service", "StatefulSet"}
    svc, sts = kinds["Service"], kinds["StatefulSet"]
    assert svc["apiVersion"] == "v1" and sts["apiVersion"] == "apps/v1"
    assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per pod
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["replicas"] >= 2


def test_kubernetes_nodes_join_through_the_service_with_the_cookie_from_a_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    kinds = _manifest()
    svc, sts = kinds["Service"], kinds["StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    cookie = env["NUMBEAM_COOKIE"]["valueFrom"]["secretKeyRef"]
    assert cookie == {"name": "numbeam-cookie", "key": "cookie"}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    command = container["command"]
    assert command[:2] == ["numbeam", "node"]
    # Every $(VAR) is one Kubernetes defines from the env; substitute a pod's values.
    used = set(re.findall(r"\$\((\w+)\)", " ".join(command)))
    assert used <= set(env)
    pod = {"POD_IP": "10.1.2.3", "POD_NAMESPACE": "prod"}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: pod[m.group(1)], a) for a in command[1:]]
    flags = [a for a in argv if a.startswith("--")]
    assert set(flags) <= _node_options(capsys)
    opts = dict(itertools.pairwise(argv))
    assert "--curve" in flags and opts["--listen"] == "0.0.0.0"

    (port,) = container["ports"]
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == port["name"]
    name = opts["--name"]
    assert name == f"numbeam@10.1.2.3:{port['containerPort']}"
    strategy = parse_spec(opts["--join"], name)  # the real parser: a valid spec
    assert isinstance(strategy, Dns)
    assert strategy.name == f"{svc['metadata']['name']}.prod.svc.cluster.local"
    assert strategy.port == port["containerPort"] == svc_port["port"]
    assert strategy.basename == "numbeam"  # so a pod finds its own name among the records
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "numbeam ping --curve" in probe[2]


def test_sbatch_script_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH.read_text(), re.M)
    assert "--ntasks-per-node=1" in directives


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_sbatch_script_starts_one_node_per_host_joined_by_slurm(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    # srun: records its options, then runs the task's command once per host of the job, with
    # the variables srun gives each task; numbeam: records its command line.
    _stub(
        bin_dir / "srun",
        'opts=(); while [[ "$1" == --* ]]; do opts+=("$1"); shift; done\n'
        f'printf "%s\\n" "${{opts[@]}}" > {out}/srun\n'
        'for host in $(echo "$SLURM_JOB_NODELIST" | tr , " "); do\n'
        '  SLURMD_NODENAME="$host" SLURM_LOCALID=0 "$@" || exit 1\n'
        "done\n",
    )
    _stub(bin_dir / "numbeam", f'printf "%s\\n" "$@" > "{out}/node-$SLURMD_NODENAME"\n')
    cookie = tmp_path / "shared" / "cookie"
    cookie.parent.mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "NUMBEAM_COOKIE_FILE": str(cookie),
        "SLURM_JOB_NODELIST": "gpu01,gpu02",  # (the stand-in srun does not expand brackets)
    }
    proc = subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600 and len(cookie.read_text()) > 32
    assert "--kill-on-bad-exit=1" in (out / "srun").read_text().split()
    for host in ("gpu01", "gpu02"):
        argv = (out / f"node-{host}").read_text().split("\n")[:-1]
        assert argv == shlex.split(
            f"node --name numbeam@{host}:9100 --listen 0.0.0.0 --cookie-file {cookie} "
            "--devices auto --join slurm"
        )


def test_the_slurm_names_include_each_nodes_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # As srun sets them for the task on gpu02 of a four-host job.
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-03],cpu7")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu02")
    strategy = parse_spec("slurm", "numbeam@gpu02:9100")
    assert isinstance(strategy, Static)
    assert sorted(strategy.names) == [
        "numbeam@cpu7:9100",
        "numbeam@gpu01:9100",
        "numbeam@gpu02:9100",
        "numbeam@gpu03:9100",
    ]
    assert nb.cluster.expand_hostlist("gpu[01-03],cpu7")[1] == "gpu02"
