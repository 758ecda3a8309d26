"""Train a two-tower recommender whose user and item tables live in the sharded store.

The same as ``python -m shardemb demo``; see ``shardemb/demo.py`` for the model, the data
handling (MovieLens files or a synthetic log), checkpoints and evaluation.

Run: ``python examples/train_recommender.py [--data ratings.dat] [--epochs 5] [--resume]``
(``--help`` lists every flag).
"""

from shardemb.cli import demo_main as main

if __name__ == "__main__":
    raise SystemExit(main())
