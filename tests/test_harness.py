"""The harness end to end on real files: CLI, runner, results store, feature cache, zero-shot numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import eval_name
import torch
import torch.nn.functional as F
from PIL import Image

from bench.cli import main
from bench.store import Store, config_hash

DATASETS = ["caltech101", "eurosat"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    """Two generated datasets in CoOp's layout and a saved tiny checkpoint (deterministic weights)."""
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    for key in DATASETS:
        make_dataset_tree(key, root, n_classes=5, per_class=(8, 4, 12))
    return {"root": root, "ckpt": tiny_ckpt}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def base_args(world, results):
    return ["--backbone", "tiny-test", "--pretrained", world["ckpt"], "--data-root", world["root"],
            "--results", results]


def stored(results: Path) -> list[dict]:
    return Store(results).all_results()


def test_zeroshot_end_to_end_matches_hand_computation(world, tmp_path, capsys):
    t0 = time.time()
    code, out, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", ",".join(DATASETS),
                             *base_args(world, tmp_path / "res"))
    assert code == 0, err
    assert time.time() - t0 < 60
    results = {r["config"]["train"]["dataset"]: r for r in stored(tmp_path / "res")}
    assert sorted(results) == DATASETS  # one result per dataset, no seed dimension

    # By hand: open_clip model + PIL + the eval transform + the dataset's template; no bench feature code.
    import open_clip

    from bench.data import get_spec, load_splits

    model = open_clip.create_model("tiny-test")
    model.load_state_dict(torch.load(world["ckpt"]))
    model.eval()
    tok = open_clip.get_tokenizer("tiny-test")
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    import torchvision.transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    for key in DATASETS:
        splits = load_splits(key, world["root"])
        spec = get_spec(key)
        with torch.no_grad():
            imgs = torch.stack([tf(Image.open(splits.root / it.path).convert("RGB")) for it in splits.test])
            img = F.normalize(model.encode_image(imgs), dim=-1)
            texts = [spec.template.format(c.replace("_", " ")) for c in splits.classnames]
            txt = F.normalize(model.encode_text(tok(texts)), dim=-1)
        pred = (img @ txt.t()).argmax(1)
        labels = torch.tensor([it.label for it in splits.test])
        expected = 100.0 * (pred == labels).float().mean().item()
        m = results[key]["metrics"][key]
        assert m["top1"] == pytest.approx(expected, abs=1e-6)
        assert m["n_test"] == len(splits.test)
        per_class = [100.0 * (pred[labels == c] == c).float().mean().item() for c in range(len(splits.classnames))]
        assert [m["per_class"][c] for c in splits.classnames] == pytest.approx(per_class)


def test_result_json_holds_everything(world, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat",
                           *base_args(world, tmp_path / "res"))
    assert code == 0, err
    [path] = list((tmp_path / "res").rglob("*.json"))
    r = json.loads(path.read_text())
    assert r["status"] == "complete" and r["hash"] == config_hash(r["config"]) and r["hash"] in path.name
    cfg = r["config"]
    assert cfg["method"] == "zeroshot" and cfg["backbone"]["arch"] == "tiny-test"
    assert cfg["backbone"]["weights"].startswith("sha256:")
    m = r["metrics"]["eurosat"]
    assert set(m) >= {"top1", "per_class", "macro_f1", "n_test"}
    assert r["templates"]["templates"] == ["a centered satellite photo of {}."]
    assert r["time"]["total_s"] > 0 and r["memory"]["host_max_rss_mb"] > 0
    env = r["environment"]
    assert env["packages"]["torch"] and env["packages"]["open_clip_torch"] and "slurm_job_id" in env
    assert "device" in env and "git_commit" in env


def test_rerun_skips_complete_and_redoes_partial(world, tmp_path, capsys):
    args = ["run", "--method", "zeroshot", "--datasets", ",".join(DATASETS), *base_args(world, tmp_path / "res")]
    assert run_cli(capsys, *args)[0] == 0
    paths = sorted((tmp_path / "res").rglob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in paths]
    # A crashed non-atomic writer would leave a truncated file; a killed atomic one a stray temp file.
    paths[0].write_text(paths[0].read_text()[:100])
    (paths[1].parent / ".leftover.json.tmp").write_text("{")
    code, out, err = run_cli(capsys, *args)
    assert code == 0
    assert "1 already complete, 1 ran" in out
    assert json.loads(paths[0].read_text())["status"] == "complete"
    assert paths[1].stat().st_mtime_ns == mtimes[1]  # the complete one was skipped, not rewritten


def test_killed_grid_leaves_only_complete_results(world, tmp_path):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    keys = ["caltech101", "eurosat", "dtd", "food101"]
    for k in keys:
        make_dataset_tree(k, root, n_classes=5, per_class=(2, 2, 40))
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "zeroshot", "--datasets", ",".join(keys),
           "--backbone", "tiny-test", "--pretrained", str(world["ckpt"]), "--data-root", str(root),
           "--results", str(res)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(res.rglob("*.json")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for p in res.rglob("*.json"):  # whatever was written is complete, never partial
        assert json.loads(p.read_text())["status"] == "complete"
    n_before = len(stored(res))
    assert n_before < len(keys) or proc.returncode == 0
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{n_before} already complete" in done.stdout
    assert len(stored(res)) == len(keys)


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path)
    config = {"method": "m", "train": {"dataset": "d", "shots": 1, "seed": 1}, "evals": []}

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)  # interrupted after the bytes went to the temporary file
    with pytest.raises(KeyboardInterrupt):
        store.write({"status": "complete", "hash": config_hash(config), "config": config})
    assert list(tmp_path.rglob("*")) == [] or all(p.is_dir() for p in tmp_path.rglob("*"))
    assert not store.is_complete(config)


def _write_many(args):
    root, i = args
    store = Store(root)
    for j in range(20):
        config = {"method": "m", "protocol": "fewshot", "train": {"dataset": "d", "shots": 1, "seed": j}, "evals": []}
        store.write({"status": "complete", "hash": config_hash(config), "config": config, "metrics": {eval_name(e): {"top1": 50.0} for e in config["evals"]}, "writer": i})


def test_concurrent_writers_never_corrupt(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_write_many, [(tmp_path, i) for i in range(4)])
    results = Store(tmp_path).all_results()
    assert len(results) == 20 and {r["writer"] for r in results} <= set(range(4))


def test_feature_cache_reuses_and_keys_on_content(world, tmp_path, monkeypatch):
    from bench.model.backbone import create_backbone
    from bench.data import load_splits
    from bench.features import FeatureCache

    bb = create_backbone("tiny-test", str(world["ckpt"]))
    splits = load_splits("eurosat", world["root"])
    paths = [it.path for it in splits.train]
    c1 = FeatureCache(bb, root=tmp_path / "feats")
    a = c1.get(splits.root, paths, "eval")
    v0 = c1.get(splits.root, paths, "train", view=0)
    v1 = c1.get(splits.root, paths, "train", view=1)
    assert c1.encoded == 3 * len(paths)
    assert not torch.allclose(v0, v1) and not torch.allclose(a, v0)
    c2 = FeatureCache(bb, root=tmp_path / "feats")  # a new process sees the same cache
    assert torch.equal(c2.get(splits.root, paths, "train", view=1), v1)
    assert torch.equal(c2.get(splits.root, paths[:3], "eval"), a[:3])
    assert c2.encoded == 0
    # the same view of an image is the same wherever it is computed (seeded by image and view)
    c3 = FeatureCache(bb, root=tmp_path / "other")
    assert torch.allclose(c3.get(splits.root, paths[:2], "train", view=1), v1[:2], atol=1e-6)
    # a changed image file is re-encoded
    img = splits.root / paths[0]
    Image.new("RGB", (48, 48), (255, 0, 0)).save(img)
    os.utime(img, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    new = c2.get(splits.root, paths, "eval")
    assert c2.encoded == 1 and not torch.allclose(new[0], a[0]) and torch.equal(new[1:], a[1:])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--method", "nosuch"], "unknown method 'nosuch'; known methods:"),
        (["run", "--method", "zeroshot", "--datasets", "nosuch"], "unknown dataset"),
        (["run", "--method", "zeroshot", "--shots", "1,two"], "bad --shots '1,two'"),
        (["run", "--method", "zeroshot", "--seeds", ""], "bad --seeds"),
        (["run", "--method", "zeroshot", "--shots", "0"], "shot counts must be >= 1"),
        (["run", "--method", "zeroshot", "--backbone", "NoSuchNet"], "NoSuchNet"),
        (["run", "--method", "zeroshot", "--set", "nokey"], "expected KEY=VALUE"),
        (["run", "--method", "zeroshot", "--set", "lr=0.1"], "unknown hyperparameter(s) lr"),
    ],
)
def test_user_errors_are_one_line(world, tmp_path, capsys, argv, needle):
    extra = [] if "--backbone" in argv else ["--backbone", "tiny-test"]
    code, out, err = run_cli(capsys, *argv, *extra, "--pretrained", world["ckpt"], "--data-root", world["root"],
                             "--results", tmp_path)
    assert code == 2
    assert needle in err and err.startswith("error: ") and err.count("\n") == 1


def test_missing_data_and_bad_checkpoint_errors(world, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "dtd", "--backbone", "tiny-test",
                           "--pretrained", world["ckpt"], "--data-root", tmp_path / "nodata", "--results", tmp_path)
    assert code == 2 and str(tmp_path / "nodata" / "dtd") in err and err.count("\n") == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test",
                           "--pretrained", bad, "--data-root", world["root"], "--results", tmp_path / "r")
    assert str(bad) in err and err.count("\n") <= 2
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test",
                           "--pretrained", tmp_path / "absent.pt", "--data-root", world["root"], "--results", tmp_path)
    assert code == 2 and "absent.pt" in err


def test_undecodable_image_is_named_and_other_results_kept(tmp_path, world, capsys):
    from bench.data import load_splits
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    for k in DATASETS:
        make_dataset_tree(k, root, n_classes=3, per_class=(2, 2, 3))
    broken = load_splits("eurosat", root).root / load_splits("eurosat", root).test[1].path
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    code, out, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", ",".join(DATASETS),
                             "--backbone", "tiny-test", "--pretrained", world["ckpt"], "--data-root", root,
                             "--results", tmp_path / "res")
    assert code == 1 and "1 failed" in out
    assert f"cannot decode image {broken}" in err
    assert [r["config"]["train"]["dataset"] for r in stored(tmp_path / "res")] == ["caltech101"]
    code, out, _ = run_cli(capsys, "status", "--method", "zeroshot", "--datasets", ",".join(DATASETS),
                           "--backbone", "tiny-test", "--pretrained", world["ckpt"], "--data-root", root,
                           "--results", tmp_path / "res")
    assert "cannot decode image" in out


def test_list_and_data_commands(world, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "list", "methods")
    assert code == 0 and "zeroshot" in out
    code, out, _ = run_cli(capsys, "list", "datasets")
    for key in ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch",
                "imagenet_a", "imagenet_r"]:
        assert key in out
    code, out, _ = run_cli(capsys, "data", "check", "--data-root", world["root"])
    assert code == 1  # most datasets are missing here
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "found" in lines["eurosat"] and "missing" in lines["dtd"] and str(world["root"] / "dtd") in lines["dtd"]
    code, out, _ = run_cli(capsys, "data", "sample", "--dataset", "eurosat", "--shots", "2", "--seed", "1",
                           "--data-root", world["root"])
    path = Path(out.strip())
    sample = json.loads(path.read_text())
    assert code == 0 and len(sample["train"]) == 10 and len(sample["val"]) == 10
    assert all(not Path(p).is_absolute() for p, _, _ in sample["train"])


def test_same_seed_gives_identical_metrics_in_fresh_processes(world, tmp_path):
    """Two independent processes (separate feature caches too) produce the same result metrics for a seed."""
    metrics = []
    for i in range(2):
        env = {**os.environ, "BENCH_CACHE": str(tmp_path / f"cache{i}")}
        runs = [["coop,kgcoop", ["--set", "epochs=3"]], ["linear_probe", []]]
        for methods, extra in runs:
            cmd = [sys.executable, "-m", "bench.cli", "run", "--method", methods, "--datasets", "eurosat",
                   "--shots", "2", "--seeds", "1", *extra, "--backbone", "tiny-test", "--pretrained",
                   str(world["ckpt"]), "--data-root", str(world["root"]), "--results", str(tmp_path / f"res{i}")]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stderr
        metrics.append({r["config"]["label"]: r["metrics"] for r in stored(tmp_path / f"res{i}")})
    assert len(metrics[0]) == 3 and metrics[0] == metrics[1]
