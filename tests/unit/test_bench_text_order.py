"""bench/text.py's claim that both sides train on the same batches: the batch sampler it hands
sentence-transformers' trainer yields, epoch by epoch, exactly the batches embedmix's text loop trains on."""

from __future__ import annotations

import json
from pathlib import Path

from embedmix.core.data import load_dataset
from embedmix.core.spec import validate_spec
from embedmix.core.text_train import TextTrainer
from tests.bench_scripts import bench_script

bench_text = bench_script("text")


def test_the_peer_sampler_yields_the_batches_embedmix_trains_on(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in bench_text.make_pairs(24, 3)))
    args = type("Args", (), {"test_fraction": 0.25, "max_length": 16, "epochs": 2, "batch": 5, "lr": 1e-5, "seed": 7})()
    job = validate_spec(bench_text.job_spec(path, args))
    data = load_dataset(job)
    trainer = TextTrainer(job, data)
    trained = bench_text.record_batches(trainer)
    trainer.run()

    yielded: list[list[int]] = []
    sampler = bench_text.embedmix_order_sampler(7, yielded)(list(range(len(data.anchors_train))), batch_size=5,
                                                               drop_last=False)
    assert len(sampler) == trainer.steps_per_epoch == 3  # 18 train pairs, batches of 5, the partial one dropped
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert list(sampler) == trained[epoch * 3:(epoch + 1) * 3]
    assert yielded == trained and trained[:3] != trained[3:]
