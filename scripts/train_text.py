"""Train a conditional QGFD text diffusion model: paraphrase generation on MRPC (sentence1 -> sentence2).

The denoiser works in T5's token-embedding space (Diffusion-LM) and is conditioned on the
T5 encoder's states of the source sentence. The steps below are what `qgfd-hf train
--modality text` does, written out to read and change.

    # online: GLUE MRPC from the Hub and a pretrained t5-small
    python scripts/train_text.py --backbone t5-small --output-dir runs/mrpc --max-steps 20000

    # offline: local files with MRPC's columns (sentence1, sentence2, label) and a local T5 folder
    python scripts/train_text.py --data-files mrpc_train.csv --backbone ./t5-small --output-dir runs/mrpc

    # offline smoke run, no download at all: the generated reversal task and a small random T5
    python scripts/train_text.py --reversal --output-dir runs/reversal --max-steps 3000

    # 4 GPUs, or 2 CPU processes (accelerate 1.x: `--cpu --num_processes 2` starts only one)
    accelerate launch --num_processes 4 scripts/train_text.py --backbone t5-small --output-dir runs/mrpc
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_text.py --reversal --output-dir runs/rev

    # stop it any time (Ctrl-C, a kill) and continue from the newest checkpoint
    python scripts/train_text.py --backbone t5-small --output-dir runs/mrpc --resume
"""

import argparse

from accelerate.utils import set_seed
from transformers import AutoTokenizer, T5Config

from qgfd_hf import create_qgfd_diffusion_model
from qgfd_hf.tasks.base import pipeline_samples
from qgfd_hf.data.core import (
    REVERSAL_VOCAB,
    Seq2SeqCollator,
    build_word_tokenizer,
    check_dataset_for_modality,
    check_text_fits,
    load_mrpc,
    make_reversal_dataset,
    train_test_split_dataset,
)
from qgfd_hf.training.trainer import QGFDTrainer
from qgfd_hf.training.arguments import QGFDTrainingArguments


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--backbone", default=None, help="T5 Hub id or folder (its tokenizer too); needed for MRPC")
    p.add_argument("--data-files", nargs="+", default=None, help="local csv/json/parquet with sentence1, sentence2, label")
    p.add_argument("--reversal", action="store_true", help="the generated reversal task with a random T5 (offline)")
    p.add_argument("--seq-len", type=int, default=None, help="generated length in tokens (default: 64 for MRPC, 7 for reversal)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--qgfd-steps", type=int, default=1)
    p.add_argument("--qgfd-alpha", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    return p.parse_args()


def main():
    args = parse_args()

    # 1. Data: source -> target pairs, checked before anything is built.
    if args.reversal:
        pairs = make_reversal_dataset(4000)
        train, heldout = train_test_split_dataset(pairs, 200)
        dataset_name = "generated word-sequence reversal pairs"
    else:
        train = load_mrpc(args.data_files)  # the Hub's glue/mrpc when no files are given
        train, heldout = train_test_split_dataset(train, min(200, len(train) // 10))
        dataset_name = "nyu-mll/glue" if args.data_files is None else "local MRPC-style pairs"
    check_dataset_for_modality(train, "text")

    # 2. Tokenizer and T5 backbone: pretrained (Hub id or folder), or small and random for reversal.
    if args.backbone is not None:
        tokenizer = AutoTokenizer.from_pretrained(args.backbone)
        backbone = args.backbone
    elif args.reversal:
        tokenizer = build_word_tokenizer(REVERSAL_VOCAB)
        backbone = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    else:
        raise SystemExit("MRPC needs a pretrained T5: --backbone t5-small (or a local T5 folder).")
    seq_len = args.seq_len or (7 if args.reversal else 64)
    check_text_fits(train, tokenizer, seq_len)

    # 3. The model: the QGFD denoiser over T5 embeddings, conditioned on the source text. The
    #    embeddings (the latent space) stay frozen; the T5 layers that read the source learn.
    set_seed(args.seed)
    model, tokenizer_out, _ = create_qgfd_diffusion_model(
        "text", backbone, None, tokenizer=tokenizer, seq_len=seq_len, conditional=True, freeze_encoder=True, train_condition_encoder=True,
        d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads, d_ff=4 * args.d_model,
        beta_schedule="sqrt", prediction_type="sample", qgfd_steps=args.qgfd_steps, qgfd_alpha=args.qgfd_alpha,
    )
    tokenizer = tokenizer_out or tokenizer

    # 4. Train (checkpoints, EMA, loss curve and the final save_pretrained are the trainer's).
    training_args = QGFDTrainingArguments(
        args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        warmup_steps=min(500, args.max_steps // 10), mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every, seed=args.seed,
    )
    trainer = QGFDTrainer(model, training_args, train, Seq2SeqCollator(tokenizer, seq_len),
                          processing_class=tokenizer, metadata={"dataset": dataset_name, "modality": "text"})
    metrics = trainer.train(resume=args.resume)
    if not trainer.accelerator.is_main_process:
        return

    # 5. Sample a few held-out sources through pipeline("qgfd-diffusion").
    sources = list(heldout["source"][:5])
    for src, out, ref in zip(sources, [g[0]["generated_text"] for g in pipeline_samples(training_args.model_dir, sources)], heldout["target"][:5]):
        print(f"{src!r}\n  -> {out!r}\n  reference {ref!r}")
    print(f"final loss {metrics['final_loss']:.4f}; model in {training_args.model_dir}")


if __name__ == "__main__":
    main()
