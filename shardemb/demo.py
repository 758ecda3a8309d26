"""Train a two-tower retrieval model whose user and item tables live in the sharded store.

This is ``shardemb demo`` and ``examples/train_recommender.py``. It reads MovieLens
ratings (``--data``) or generates a synthetic log, holds out each user's latest
interaction, trains with ``model.fit`` (in-batch softmax with a log-popularity
correction), checkpoints both tables every epoch, and reports recall@10 and NDCG@10 over
the whole catalogue next to a most-popular baseline (and, with ``--compare-keras``, the
same model on ``keras.layers.Embedding``).

With ``--dynamic`` both tables are dynamic (:class:`~shardemb.DynamicEmbeddingStore`): the
model is fed the raw ids (the file's, or for the synthetic log 64-bit ids spread over the
int64 range), no id mapping is made or saved, and each table's capacity is
``--capacity-ratio`` of its distinct ids, so LFU eviction runs; the counters are printed
after every epoch. Evaluation scores the raw ids of the log (evicted ones read their
initial rows).

Example::

    shardemb demo                       # synthetic data, local Ray, a few minutes
    shardemb demo --data ml-1m/ratings.dat --epochs 10
    shardemb demo --resume --out runs/demo            # continue from the last checkpoint
    shardemb demo --resume --restore-shards 4 --out runs/demo
    shardemb demo --dynamic --out runs/dynamic          # raw ids, capacity below them
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np

from shardemb._files import atomic_write
from shardemb.recsys.demo_config import DemoConfig
from shardemb.recsys.plot import plot_history

__all__ = ["DemoConfig", "run"]


# -- data ---------------------------------------------------------------------------------
#: What a run writes in its ``--out`` folder (the only names a fresh run will remove).
RUN_OUTPUTS = ("checkpoints", "mappings", "state.json", "results.json", "training.png")


def read_data(cfg: DemoConfig):
    """The raw MovieLens ratings of ``--data`` (``None`` for the synthetic log); reading
    them first checks the file before anything is written."""
    from shardemb.recsys import load_ratings

    return load_ratings(cfg.data, cfg.format) if cfg.data else None


def load_data(cfg: DemoConfig, out: str, raw=None):
    """Encoded train/test logs, their sizes and, with ``--dynamic``, the raw id of each
    user and item row (``None`` otherwise: the id mappings are saved in, and on resume
    reused from, ``out``)."""
    from shardemb.errors import DataFormatError, ShardembError
    from shardemb.recsys import IdMapping, encode, synthetic_interactions, train_test_split
    from shardemb.recsys.synthetic import raw_ids

    keys = None
    if cfg.data and cfg.dynamic:  # rows for evaluation only: the tables see the raw ids
        log, users, items = encode(read_data(cfg) if raw is None else raw)
        keys, num_users, num_items = (users.raw_ids, items.raw_ids), len(users), len(items)
    elif cfg.data:
        raw = read_data(cfg) if raw is None else raw
        users_path = os.path.join(out, "mappings", "users.json")
        items_path = os.path.join(out, "mappings", "items.json")
        if cfg.resume and os.path.exists(users_path):
            # The rows of the checkpointed tables follow the saved mapping, not a new one.
            users, items = IdMapping.load(users_path), IdMapping.load(items_path)
            try:
                log = type(raw)(
                    users.to_rows(raw.users), items.to_rows(raw.items), raw.ratings, raw.timestamps
                )
            except ShardembError as err:
                raise DataFormatError(
                    f"{cfg.data} holds ids that are not in the saved id mapping of the run in "
                    f"{out} (the checkpointed tables follow it): {err}"
                ) from err
        else:
            log, users, items = encode(raw)
            os.makedirs(os.path.dirname(users_path), exist_ok=True)
            users.save(users_path)
            items.save(items_path)
        num_users, num_items = len(users), len(items)
    else:
        log = synthetic_interactions(cfg.users, cfg.items, cfg.interactions, seed=cfg.seed)
        num_users, num_items = cfg.users, cfg.items
        if cfg.dynamic:
            keys = (raw_ids(np.arange(num_users), 1), raw_ids(np.arange(num_items), 2))
    train, test = train_test_split(log)
    return train, test, num_users, num_items, keys


def _check_out(out: str, resume: bool) -> list[str]:
    """The previous run's outputs that a fresh run in ``out`` replaces (none with
    ``resume``); raises if ``out`` is not a folder or holds files no run wrote."""
    from shardemb.errors import InvalidConfigError

    if not os.path.exists(out):
        return []
    if not os.path.isdir(out):
        raise InvalidConfigError(f"--out {out} is a file, not a folder.")
    names = os.listdir(out)
    foreign = sorted(n for n in names if n not in RUN_OUTPUTS and ".tmp-" not in n)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise InvalidConfigError(
            f"--out {out} holds files that no demo run wrote ({shown}); a new run would "
            "replace that folder's outputs: choose an empty or new folder."
        )
    return [] if resume else sorted(names)


def _replace_previous_run(out: str, names: list[str]) -> None:
    import shutil

    for name in names:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    print(f"replacing the previous run in {out} (pass --resume to continue it instead)")


# -- model --------------------------------------------------------------------------------
def build_model(user_layer, item_layer, item_log_prob: np.ndarray | None, temperature: float):
    """Two towers (embedding lookups) scored by a dot product; the training loss is a
    softmax over the items of the batch, corrected by log item popularity (logQ), the
    standard fix for in-batch negatives that over-sample popular items. With
    ``item_log_prob=None`` (raw ids) each item's log popularity is an input,
    ``item_log_q``."""
    import keras
    import tensorflow as tf

    user = keras.Input((), dtype="int64", name="user")
    item = keras.Input((), dtype="int64", name="item")
    inputs = {"user": user, "item": item}
    u = user_layer(user)
    v = item_layer(item)
    if item_log_prob is None:
        inputs["item_log_q"] = item = keras.Input((), dtype="float32", name="item_log_q")
    else:
        log_q = tf.constant(item_log_prob, dtype="float32")

    class InBatchLogits(keras.layers.Layer):
        def call(self, u, v, item):
            logits = tf.matmul(u, v, transpose_b=True) / temperature
            q = item if item.dtype.is_floating else tf.gather(log_q, item)
            return logits - q[None, :]

    logits = InBatchLogits(name="in_batch_logits")(u, v, item)
    return keras.Model(inputs, logits)


def in_batch_softmax_loss(y_true, logits):
    """Each user's positive is the item on the same row of the batch."""
    import tensorflow as tf

    labels = tf.range(tf.shape(logits)[0])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


def _keras_optimizer(name: str, lr: float):
    import keras

    return {
        "sgd": keras.optimizers.SGD,
        "adagrad": keras.optimizers.Adagrad,
        "adam": keras.optimizers.Adam,
    }[name](learning_rate=lr)


def _evaluate(user_table, item_table, train, test, eval_users: int, seed: int) -> dict:
    from shardemb.recsys import evaluate

    users = np.unique(test.users)
    if users.size > eval_users:  # a fixed sample keeps evaluation time bounded
        users = np.sort(np.random.default_rng(seed).choice(users, eval_users, replace=False))
    sub_test = test.take(np.isin(test.users, users))
    sub_train = train.take(np.isin(train.users, users))
    return _at_10(evaluate(user_table, item_table, sub_train, sub_test, k=10))


def _at_10(metrics: dict) -> dict:
    """``{"recall": r, "ndcg": n, ...}`` at k=10 as the demo reports it: ``recall@10``,
    ``ndcg@10`` (the other keys, such as ``users``, as they are)."""
    named = {"recall": "recall@10", "ndcg": "ndcg@10"}
    return {named.get(k, k): v for k, v in metrics.items()}


# -- run ----------------------------------------------------------------------------------
def run(cfg: DemoConfig) -> dict:
    """Train, checkpoint, evaluate; returns the results also written to results.json."""
    import shardemb
    from shardemb.checkpoint import CheckpointManager
    from shardemb.recsys.metrics import popularity_baseline

    t_start = time.perf_counter()
    out = os.path.abspath(cfg.out)
    # Every input is checked before anything is written or removed.
    previous = _check_out(out, cfg.resume)
    raw = read_data(cfg)
    if cfg.backend == "ray":
        from shardemb.transport.backends import ensure_ray

        ensure_ray(cfg.address)
    if previous:
        _replace_previous_run(out, previous)
    os.makedirs(out, exist_ok=True)
    train, test, num_users, num_items, keys = load_data(cfg, out, raw)
    counts = np.bincount(train.items, minlength=num_items).astype(np.float64) + 1.0
    item_log_prob = np.log(counts / counts.sum())
    features = {"user": train.users, "item": train.items}
    if keys is not None:  # raw ids, and each item's log popularity beside it
        features = {"user": keys[0][train.users], "item": keys[1][train.items],
                    "item_log_q": item_log_prob[train.items].astype(np.float32)}  # fmt: skip
    print(
        f"data: {num_users:,} users, {num_items:,} items, {len(train):,} train and "
        f"{len(test):,} test interactions"
    )

    managers = {
        t: CheckpointManager(os.path.join(out, "checkpoints", t), keep=cfg.keep_checkpoints)
        for t in ("users", "items")
    }
    state_path = os.path.join(out, "state.json")
    history: list[dict] = []
    start_epoch = 0
    run_id = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    opt = {"name": cfg.optimizer, "learning_rate": cfg.learning_rate}
    stores = {}
    if cfg.resume and managers["users"].latest() is not None:
        with open(state_path) as f:
            state = json.load(f)
        start_epoch, history = state["epoch"], state["history"]
        for t, m in managers.items():
            stores[t] = m.restore_latest(
                name=f"demo-{t}-{run_id}", num_shards=cfg.restore_shards, backend=cfg.backend
            )
        where = managers["users"].latest()
        print(
            f"resumed from {where} (epoch {start_epoch}) on {stores['users'].num_shards} shard(s)"
        )
    else:
        sizes = {"users": num_users, "items": num_items}
        for i, t in enumerate(("users", "items")):
            capacity = max(cfg.num_shards, int(cfg.capacity_ratio * sizes[t]))
            dynamic = {"capacity": capacity, "eviction": "lfu"} if cfg.dynamic else {}
            stores[t] = shardemb.EmbeddingStore.create(
                f"demo-{t}-{run_id}",
                None if cfg.dynamic else sizes[t],
                cfg.dim,
                **dynamic,
                num_shards=min(cfg.num_shards, capacity if cfg.dynamic else sizes[t]),
                optimizer=opt,
                initializer={"kind": "normal", "stddev": 0.1},
                seed=cfg.seed + i,
                backend=cfg.backend,
            )
    user_layer = shardemb.ShardedEmbedding(
        None if keys else num_users, cfg.dim, store=stores["users"], name="user_embedding"
    )
    item_layer = shardemb.ShardedEmbedding(
        None if keys else num_items, cfg.dim, store=stores["items"], name="item_embedding"
    )
    model = build_model(user_layer, item_layer, None if keys else item_log_prob, cfg.temperature)
    model.compile(_keras_optimizer(cfg.optimizer, cfg.learning_rate), in_batch_softmax_loss)

    baseline = _at_10(popularity_baseline(train, test, num_items, k=10))
    print(
        f"most-popular baseline: recall@10 {baseline['recall@10']:.4f}, "
        f"NDCG@10 {baseline['ndcg@10']:.4f}"
    )

    for epoch in range(start_epoch, cfg.epochs):
        print(f"epoch {epoch + 1}/{cfg.epochs}")
        loss, train_s = _fit_epoch(model, features, epoch, cfg)
        counters = _print_counters(stores) if keys else None
        metrics = _evaluate(
            _rows(stores["users"], keys and keys[0]),
            _rows(stores["items"], keys and keys[1]),
            train,
            test,
            cfg.eval_users,
            cfg.seed,
        )
        t1 = time.perf_counter()
        for t, m in managers.items():
            m.save(stores[t], epoch + 1)
        ckpt_s = time.perf_counter() - t1
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "recall@10": metrics["recall@10"],
                "ndcg@10": metrics["ndcg@10"],
                "train_seconds": train_s,
                "checkpoint_seconds": ckpt_s,
                **({"tables": counters} if counters else {}),
            }
        )
        _atomic_json(state_path, {"epoch": epoch + 1, "history": history})
        print(
            f"  loss {history[-1]['loss']:.4f}  recall@10 {metrics['recall@10']:.4f}  "
            f"NDCG@10 {metrics['ndcg@10']:.4f}  ({train_s:.1f} s train, {ckpt_s:.2f} s checkpoint)"
        )

    results = {
        "config": asdict(cfg),
        "data": {"users": num_users, "items": num_items, "train": len(train), "test": len(test)},
        "shards": {t: s.num_shards for t, s in stores.items()},
        "history": history,
        "final": history[-1] if history else None,
        "most_popular": baseline,
        "checkpoints": {t: m.latest() for t, m in managers.items()},
    }
    if cfg.compare_keras:
        results["keras_embedding"] = _train_keras(
            cfg, train, test, num_users, num_items, item_log_prob
        )
    results["seconds"] = time.perf_counter() - t_start
    _atomic_json(os.path.join(out, "results.json"), results)
    plot_history(
        history, baseline, results.get("keras_embedding"), os.path.join(out, "training.png")
    )
    for s in stores.values():
        s.close()
    _summary(results, out)
    return results


def _train_keras(cfg, train, test, num_users, num_items, item_log_prob) -> dict:
    """The same model on keras.layers.Embedding, same data order and initial scale."""
    import keras

    layers = [
        keras.layers.Embedding(
            n,
            cfg.dim,
            name=f"keras_{t}",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=cfg.seed + i),
        )
        for i, (t, n) in enumerate((("users", num_users), ("items", num_items)))
    ]
    model = build_model(layers[0], layers[1], item_log_prob, cfg.temperature)
    model.compile(_keras_optimizer(cfg.optimizer, cfg.learning_rate), in_batch_softmax_loss)
    history = []
    for epoch in range(cfg.epochs):
        print(f"keras.layers.Embedding epoch {epoch + 1}/{cfg.epochs}")
        loss, train_s = _fit_epoch(model, {"user": train.users, "item": train.items}, epoch, cfg)
        m = _evaluate(
            layers[0].get_weights()[0],
            layers[1].get_weights()[0],
            train,
            test,
            cfg.eval_users,
            cfg.seed,
        )
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "recall@10": m["recall@10"],
                "ndcg@10": m["ndcg@10"],
                "train_seconds": train_s,
            }
        )
    return {"history": history, "final": history[-1]}


def _fit_epoch(model, features: dict, epoch: int, cfg: DemoConfig) -> tuple[float, float]:
    """One epoch of ``model.fit`` on ``features`` (the model's inputs, one per training
    interaction) in an order that depends on the epoch alone (so a resumed run and the
    Keras comparison see the same batches); returns (loss, seconds)."""
    from shardemb.keras.callbacks import TableStats

    n = len(features["user"])
    perm = np.random.default_rng(cfg.seed + 1 + epoch).permutation(n)
    t0 = time.perf_counter()
    fit = model.fit(
        {k: v[perm] for k, v in features.items()},
        np.zeros(n, np.float32),  # the loss takes its labels from the batch itself
        batch_size=cfg.batch_size,
        epochs=1,
        shuffle=False,
        # A progress bar redraws with escape codes: one line per epoch when redirected.
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[TableStats(["rows", "evictions"], every_n_batches=16)] if cfg.dynamic else [],
    )
    return float(fit.history["loss"][-1]), time.perf_counter() - t0


def _rows(store, keys) -> np.ndarray:
    """Every user's or item's row: the fixed table, or a dynamic table's rows of the raw
    ids (ids without a row read their initial row)."""
    return store.to_numpy() if keys is None else store.lookup(keys)


def _print_counters(stores: dict) -> dict:
    """Print each dynamic table's counters (``store.stats()``) and return them."""
    counters = {t: s.stats()["total"] for t, s in stores.items()}
    for t, c in counters.items():
        print(f"  {t}: {c['rows']:,} rows of {c['capacity']:,}, {c['inserts']:,} inserts, "
              f"{c['evictions']:,} evictions, {c['unknown_lookups']:,} lookups of ids "
              "without a row")  # fmt: skip
    return counters


def _atomic_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str))


def _summary(results: dict, out: str) -> None:
    final, pop = results["final"], results["most_popular"]
    print("\nresults")
    print(f"  {'model':<28}{'recall@10':>10}{'NDCG@10':>10}")
    if final:
        print(f"  {'ShardedEmbedding':<28}{final['recall@10']:>10.4f}{final['ndcg@10']:>10.4f}")
    if "keras_embedding" in results:
        k = results["keras_embedding"]["final"]
        print(f"  {'keras.layers.Embedding':<28}{k['recall@10']:>10.4f}{k['ndcg@10']:>10.4f}")
    print(f"  {'most popular':<28}{pop['recall@10']:>10.4f}{pop['ndcg@10']:>10.4f}")
    print(f"checkpoints: {os.path.join(out, 'checkpoints')}")
    print(f"results:     {os.path.join(out, 'results.json')}, {os.path.join(out, 'training.png')}")
