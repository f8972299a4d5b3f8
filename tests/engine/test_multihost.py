"""Two processes on one machine (jax.distributed on localhost, 2 CPU devices each) attack a tiny
model with the scanned PGD program (the adversarial set split over the processes' devices) and
train one checkpointed AST run on that set: it finishes, every file is written once (by process
0), and the set and the result equal the single-process ones on as many devices."""

import dataclasses

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import forced_devices_env

EPOCHS = 1


def _train(directory: str, out: str) -> None:
    """One tiny AST run (`test_runner.tiny_run`) on every device of every process, on the PGD set
    of its untrained model; paths written (or appended to) recorded."""
    import jax
    from test_runner import tiny_run

    from ast_jax import files
    from ast_jax.engine import LossHypers, StepSpec, fit, make_mesh, make_pgd_attack, to_host

    run = tiny_run(directory, epochs=EPOCHS)
    train = run.data.train
    variables = run.model.init(jax.random.PRNGKey(1), train.images[:1] / 255.0)
    attack = make_pgd_attack(run.model, make_mesh(), batch_size=16, mean=run.data.mean, std=run.data.std, eps=0.1,
                             step_size=0.02, steps=2, random_start=True, loop="scan")
    adv = attack(variables, train.images, train.labels, jax.random.key(3))
    shares = [shard.data.shape[0] for shard in adv.addressable_shards]
    adv = to_host(adv)
    run = dataclasses.replace(run, spec=StepSpec("ast"), hypers=LossHypers(4.0, 0.5, 2),
                              data=dataclasses.replace(run.data, adv_images=adv))

    written = []
    atomic_write = files.atomic_write
    files.atomic_write = lambda path, data: (written.append(os.path.relpath(path, directory)), atomic_write(path, data))
    append_text = files.append_text
    files.append_text = lambda path, text: (written.append(os.path.relpath(path, directory)), append_text(path, text))
    result = fit(run, log=lambda _: None)
    np.savez(out, adv, *[np.asarray(x) for x in jax.tree.leaves(result.variables)])
    with open(out + ".json", "w") as f:
        json.dump({"written": written, "devices": jax.device_count(), "history": result.history, "shares": shares}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices_per_process: int) -> dict:
    return forced_devices_env(devices_per_process, PYTHONPATH=os.pathsep.join(
        filter(None, [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), os.environ.get("PYTHONPATH")])))


@pytest.mark.slow
def test_two_processes_write_once_and_match_one_process(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    port = _free_port()
    tick = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "worker", str(tmp_path / "multi"), str(tmp_path / f"p{i}"),
                               str(port), str(i)], env=_env(2), cwd=here, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    seconds = time.perf_counter() - tick
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-3000:]
    single = subprocess.run([sys.executable, __file__, "single", str(tmp_path / "single"), str(tmp_path / "s")],
                            env=_env(4), cwd=here, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    records = [json.load(open(tmp_path / f"p{i}.json")) for i in range(2)]
    reference = json.load(open(tmp_path / "s.json"))
    assert records[0]["devices"] == records[1]["devices"] == reference["devices"] == 4
    assert records[0]["shares"] == records[1]["shares"] == [16, 16]  # each process's 2 devices: a quarter each
    assert records[1]["written"] == []  # process 1 writes no shared file
    assert sorted(records[0]["written"]) == sorted(set(records[0]["written"])) == ["metrics.jsonl", "run.json"]
    assert [row["epoch"] for row in records[0]["history"]] == list(range(1, EPOCHS + 1))
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == [str(8 * EPOCHS)]
    assert not [name for name in os.listdir(tmp_path / "multi") if ".tmp" in name]
    assert not (tmp_path / "multi" / ".lock").exists()
    assert len(list((tmp_path / "multi" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    multi = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    one = np.load(tmp_path / "s.npz")
    for name in one.files:
        np.testing.assert_array_equal(multi[0][name], multi[1][name])
        np.testing.assert_allclose(multi[0][name], one[name], rtol=0, atol=1e-6)
    for key in ("train_loss", "test_accuracy"):
        assert abs(records[0]["history"][-1][key] - reference["history"][-1][key]) < 1e-6, key
    print(f"two-process run: {seconds:.1f} s")


if __name__ == "__main__":
    mode, directory, out = sys.argv[1:4]
    if mode == "worker":
        import jax

        port, process_id = sys.argv[4:6]
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                                   process_id=int(process_id))
    _train(directory, out)
