# coding=utf-8
"""Text: data, defaults, demo and scores (the training side; the model is
`TextQGFDDiffusionModel`, conditional on a source text).

- data: Shakespeare's plays (`--dataset shakespeare`, the demo's: the next line given the line
  before it, split by play) and Wikipedia leads (`--dataset wikipedia`: a sentence given its
  article's topic label, split by article), read from data packages (`qgfd_hf.data.text`), with a
  word-level tokenizer over the training text's most frequent words; the generated word-reversal
  task (`--dataset reversal`, the fast path, and `train`'s default); GLUE MRPC paraphrase pairs
  (`--dataset mrpc`, online), or local csv / json / parquet pairs (`--data-files`, MRPC's columns);
- model: a small random T5 (its token embeddings are the latent space, its encoder reads the
  source), or `--backbone t5-small`, or any BERT-family folder (`--backbone <all-MiniLM-L6-v2's
  folder>`, reversal); with `--denoiser pretrained` the backbone's own stack (T5's or BERT's
  encoder) is the denoiser;
- scores: Shakespeare and Wikipedia as text-generation papers do (`qgfd_hf.metrics.text`: FD and
  k-NN precision / recall of MiniLM sentence embeddings against held-out text, distinct-n, words
  in the training vocabulary, trigram perplexity), beside real held-out text and a trigram
  sampler; reversal: exact match;
- what a person looks at: `samples.jsonl` (source, sample, reference) and, for real text,
  `samples.txt` (condition -> generated -> reference, and the trigram's sample).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List

from ._text_real import REAL_TEXT, evaluate_real_text, example_condition, load_real_text, real_text_card_metrics, real_text_report, write_readable_samples
from .base import ModalityTask, TaskData, denoiser_kwargs, diffusion_values, guidance_kwargs, pipeline_samples, register_task, sample_output


@register_task
class TextTask(ModalityTask):
    name = "text"
    summary = "text pairs (source -> target): Shakespeare's next line, Wikipedia sentences by topic, word reversal, MRPC, or your csv/json/parquet"
    datasets = ("shakespeare", "wikipedia", "reversal", "mrpc")
    demo_datasets = ("shakespeare", "wikipedia", "reversal")  # the data `qgfd-hf demo --dataset` scores (Shakespeare by default)
    data_help = "text: local csv/json/parquet with sentence1, sentence2, label (MRPC's columns)"
    output_suffixes = {".jsonl": "a JSON line per source text: its source and sample (the samples are printed as well)"}
    defaults = dict(
        # denoiser over the token embeddings of a small random T5 (no download), conditioned on
        # the T5 encoder's states of the source sequence
        d_model=64, num_heads=4, num_layers=3, d_ff=128,
        t5_d_model=32, t5_layers=2, t5_heads=4, t5_d_ff=64,
        # Diffusion-LM's choices: the sqrt schedule and x0 ("sample") prediction
        num_timesteps=1000, beta_schedule="sqrt", prediction_type="sample",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        # The T5 is random: its token embeddings (the latent space) stay frozen, while its encoder
        # layers that read the source learn (train_condition_encoder, the model's default); frozen
        # random encoder states do not tell the denoiser where a source word sits.
        model_kwargs=dict(freeze_encoder=True, train_condition_encoder=True),
        # Shakespeare (the demo's data): lines of at most 15 words, a 4000-word vocabulary
        vocab_size=4000, max_tokens=15, num_samples=500,
        max_steps=2000, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        sampler="ddim", num_inference_steps=50,
    )
    # Per dataset, what differs from `defaults`.
    dataset_settings = {
        "shakespeare": {},
        # sentences of up to 31 words: a step costs about twice Shakespeare's, so fewer steps
        "wikipedia": dict(vocab_size=8000, max_tokens=31, heldout_percent=20, max_steps=1500),
        "reversal": dict(num_pairs=4000, num_heldout=200, min_len=3, max_len=6, num_samples=200, max_steps=3000),
        "mrpc": {},
    }

    def _dataset(self, args, for_demo: bool) -> str:
        name = getattr(args, "dataset", None)
        if name is None:  # the demo's data; `train` without --dataset: MRPC's columns for files, else the fast reversal task
            name = self.datasets[0] if for_demo else ("mrpc" if getattr(args, "data_files", None) else "reversal")
        if name not in self.datasets:
            raise ValueError(f"Unknown text --dataset {name!r}; allowed: {', '.join(self.datasets)}.")
        return name

    def settings(self, args, for_demo: bool = False) -> Dict[str, object]:
        s = super().settings(args, for_demo)
        if getattr(args, "data_dir", None) is None:
            s.update(self.dataset_settings[self._dataset(args, for_demo)])
        return s

    def add_arguments(self, group) -> None:
        group.add_argument("--seq-len", type=int, default=None, help="text: length of generated sequences (tokens)")
        group.add_argument("--train-condition-encoder", action=argparse.BooleanOptionalAction, default=None,
                           help="text: the encoder layers that read the source text learn with the denoiser (default: on; "
                                "--no-train-condition-encoder keeps a pretrained --backbone's encoder frozen, and each step cheaper)")

    def load_data(self, args, settings) -> TaskData:
        from ..data.core import check_dataset_for_modality, load_mrpc, make_reversal_dataset, train_test_split_dataset

        if getattr(args, "data_dir", None) is not None:
            raise ValueError("--data-dir is a folder of files; text takes --dataset shakespeare|wikipedia|reversal|mrpc or --data-files.")
        name = self._dataset(args, for_demo=False)
        d = settings
        if name in REAL_TEXT:
            data = load_real_text(name, d)
        elif name == "reversal":
            pairs = make_reversal_dataset(d.get("num_pairs", 4000), min_len=d.get("min_len", 3), max_len=d.get("max_len", 6), seed=0)
            train, test = train_test_split_dataset(pairs, d.get("num_heldout", 200), seed=0)
            data = TaskData(train, name, test=test, card_name="generated word-sequence reversal pairs (qgfd_hf.data.core.make_reversal_dataset)")
        else:
            files = getattr(args, "data_files", None)
            data = TaskData(load_mrpc(files), name, card_name=None if files else "nyu-mll/glue")
        check_dataset_for_modality(data.train, "text", f"The dataset {name!r}")
        return data

    def build_model(self, args, data, settings):
        from transformers import AutoTokenizer, T5Config

        from .. import create_qgfd_diffusion_model
        from ..data.core import REVERSAL_VOCAB, Seq2SeqCollator, build_word_tokenizer, check_text_fits

        d = settings
        if args.backbone is not None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(args.backbone)
            except Exception as e:
                raise ValueError(f"Could not load the tokenizer of --backbone {args.backbone!r} ({type(e).__name__}: {e}).") from e
            backbone = args.backbone
        elif data.name == "reversal" or data.name in REAL_TEXT:
            tokenizer = build_word_tokenizer(REVERSAL_VOCAB if data.name == "reversal" else data.info["vocab"])
            backbone = T5Config(
                vocab_size=len(tokenizer), d_model=d["t5_d_model"], d_kv=d["t5_d_model"] // d["t5_heads"], d_ff=d["t5_d_ff"],
                num_layers=d["t5_layers"], num_heads=d["t5_heads"], pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        else:
            raise ValueError("--dataset mrpc needs a pretrained T5: --backbone t5-small (or a local T5 folder).")
        if args.seq_len is not None and args.seq_len < 1:
            raise ValueError(f"--seq-len must be >= 1, got {args.seq_len}.")
        if args.seq_len is not None:
            seq_len = args.seq_len
        elif data.name == "reversal" and args.backbone is not None:
            # A pretrained tokenizer splits the words into its own pieces (and may add [CLS] / [SEP]):
            # the longest target, as it tokenizes it, sets the length.
            targets = list(data.train["target"]) + (list(data.test["target"]) if data.test is not None else [])
            seq_len = max(len(ids) for ids in tokenizer(targets)["input_ids"])
        elif data.name in REAL_TEXT:
            seq_len = d["max_tokens"] + 1  # the longest target and its </s>
        else:
            seq_len = d.get("max_len", 6) + 1 if data.name == "reversal" else 64
        check_text_fits(data.train, tokenizer, seq_len, f"The dataset {data.name!r}")
        kwargs = dict(diffusion_values(args, d), seq_len=seq_len, conditional=True, **d.get("model_kwargs", {}))
        if getattr(args, "train_condition_encoder", None) is not None:
            kwargs["train_condition_encoder"] = args.train_condition_encoder
        kwargs.update(denoiser_kwargs(args))
        model, tok, _ = create_qgfd_diffusion_model("text", backbone, None, tokenizer=tokenizer, **kwargs)
        tokenizer = tok or tokenizer
        return model, tokenizer, Seq2SeqCollator(tokenizer, seq_len)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        sources = list(data.test["source"])
        outs = pipeline_samples(model_dir, sources, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
                                seed=args.seed, progress=not args.no_progress)
        return [group[0]["generated_text"] for group in outs]  # one list of samples per source

    def evaluate(self, samples, data, settings):
        if data.name in REAL_TEXT:
            return evaluate_real_text(samples, data, settings)
        from ..metrics.core import exact_match

        targets = list(data.test["target"])
        acc = exact_match(samples, targets)
        sources = list(data.test["source"])
        return {
            "metrics": {"exact_match": acc, "num_heldout": len(targets)},
            "targets": {"exact_match_at_least_0.8": acc >= 0.8},
            "examples": [{"source": s, "sample": p, "reference": r} for s, p, r in list(zip(sources, samples, targets))[:5]],
        }

    def write_samples(self, samples, data, output_dir, prefix="samples", labels=None):
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{prefix}.jsonl")
        paths = {"samples": path}
        if data is not None and data.test is not None:
            rows = [{"source": s, "sample": p, "reference": r, "exact": " ".join(p.split()) == r}
                    for s, p, r in zip(data.test["source"], samples, data.test["target"])]
            if data.name in REAL_TEXT:
                for row in rows:
                    row.pop("exact")
                paths["readable"] = write_readable_samples(rows, data, os.path.join(output_dir, f"{prefix}.txt"))
        else:
            rows = samples
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return paths

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        if "exact_match" not in m:
            return real_text_report(result)
        lines = [f"Exact match on {m['num_heldout']} held-out pairs: {m['exact_match']:.1%}"]
        lines += [f"  {ex['source']!r} -> {ex['sample']!r} (reference {ex['reference']!r})" for ex in result["examples"][:3]]
        return lines

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        if "exact_match" not in m:
            return real_text_card_metrics(result)
        return {f"exact match, {m['num_heldout']} held-out pairs": round(m["exact_match"], 3)}

    def write_validation_samples(self, model, processor, data, settings, folder, step):
        rows = data.test if data.test is not None else data.train
        sources = list(rows["source"][:8])
        outs = pipeline_samples(model, sources, num_inference_steps=25, sampler="ddim", seed=0, progress=False, tokenizer=processor)
        samples = [{"source": s, "sample": g[0]["generated_text"], "reference": r} for s, g, r in zip(sources, outs, rows["target"][:8])]
        return self.write_samples(samples, None, folder, prefix=f"step-{step:08d}")

    def sample_hint(self, model_dir: str) -> str:
        return f'qgfd-hf sample {model_dir} --condition "{example_condition(model_dir)}"'

    def sample_command(self, model, args) -> List[str]:
        if not args.condition:
            raise ValueError("This text model is conditional: give --condition with the source text(s).")
        self.check_output(args)  # before sampling
        outs = pipeline_samples(model, args.condition, num_inference_steps=args.num_inference_steps, sampler=args.sampler,
                                seed=args.seed, progress=not args.no_progress, timestep_spacing=getattr(args, "timestep_spacing", None),
                                **guidance_kwargs(args))
        lines = [f"{src!r} -> {group[0]['generated_text']!r}" for src, group in zip(args.condition, outs)]
        if getattr(args, "output", None):  # written only where asked for; the printout is the default
            out_dir, prefix, _ = sample_output(model, args, self)
            rows = [{"source": src, "sample": group[0]["generated_text"]} for src, group in zip(args.condition, outs)]
            paths = self.write_samples(rows, None, out_dir, prefix=prefix)
            lines += [f"  {what:15s} {os.path.abspath(p)}" for what, p in paths.items()]
        return lines
