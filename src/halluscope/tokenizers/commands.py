"""CLI: `halluscope import-taming`, `halluscope train-tokenizer`, `halluscope tokenize`."""

from __future__ import annotations

import argparse

from halluscope.errors import UserError

# The handlers import their machinery themselves: `halluscope --help` should not load taming.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-taming", help="convert a taming-transformers VQGAN (YAML + .ckpt) to a tokenizer folder")
    p.add_argument("--config", required=True, help="taming model YAML (model.params.ddconfig, n_embed, embed_dim)")
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint; read without running pickled code")
    p.add_argument("--out", required=True, help="tokenizer folder to write")
    p.set_defaults(func=import_taming_cmd)

    p = subparsers.add_parser("train-tokenizer", help="train an image VQGAN or a 3D clip VQGAN")
    p.add_argument("--kind", choices=["image", "video"], required=True)
    p.add_argument("--data", required=True, help="folder of images (kind image) or videos (kind video)")
    p.add_argument("--out", required=True, help="run folder: model/, metrics.jsonl, samples/, train_state.pt")
    p.add_argument("--preset", choices=["tiny", "small", "base"], default="tiny")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resolution", type=int, help="input size (default: the preset's)")
    p.add_argument("--frames", type=int, help="frames per clip, kind video (default: the preset's)")
    p.add_argument("--downsample", type=parse_downsample, metavar="T,H,W",
                   help="pixels per token along time, height, width; kind video (default: the preset's)")
    p.add_argument("--padding", choices=["zeros", "replicate"],
                   help="how convolutions see past borders: zeros (taming's, the presets') or replicate "
                        "(a flat region gets one code everywhere: stable tokens)")
    p.add_argument("--causal", action="store_true",
                   help="a causal encoder, so a context's tokens do not depend on what follows it: image, token "
                        "row i sees only the pixel rows down to the end of its band; video (the 3D VQGAN), "
                        "latent frame j only the frames up to the end of its window. (A framewise clip "
                        "tokenizer is causal in time already: it encodes each frame on its own.)")
    p.add_argument("--codebook-size", type=int, help="number of codes, the GPT's vocabulary (default: the preset's)")
    p.add_argument("--restart-every", type=int, default=25,
                   help="steps between restarts of unused codes from recent encoder outputs; 0: never (default 25)")
    p.add_argument("--l2-weight", type=float, default=1.0,
                   help="weight of the squared error added to the L1 reconstruction loss (default 1)")
    p.add_argument("--gan-start", type=int, help="switch the PatchGAN on at this step (default: no GAN)")
    p.add_argument("--disc-weight", type=float, default=0.5)
    p.add_argument("--perceptual", nargs="+", default=[], metavar="FILE",
                   help="local VGG16 (+ LPIPS heads) weight files; without them the perceptual loss is off")
    p.add_argument("--sample-every", type=int, default=250)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=train_cmd)

    p = subparsers.add_parser("tokenize", help="encode a data folder into a token cache")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--data", required=True, help="folder of images or videos (write a world with `halluscope world`)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=4096, help="examples per shard")
    p.add_argument("--frames", type=int, help="tokenize clips of this many frames with an image tokenizer, frame by frame")
    p.add_argument("--device", help="where the encoder runs: cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted cache (a finished one is left alone)")
    p.set_defaults(func=tokenize_cmd)


def parse_downsample(text: str) -> tuple[int, int, int]:
    try:
        factors = tuple(int(v) for v in text.split(","))
    except ValueError:
        factors = ()
    if len(factors) != 3 or min(factors) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers T,H,W, got {text!r}")
    return factors


def positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"--{name} must be at least 1 (got {value})")


def import_taming_cmd(args: argparse.Namespace) -> int:
    from halluscope.tokenizers.taming_import import import_taming

    model = import_taming(args.config, args.ckpt, args.out)
    print(f"wrote {args.out}: image VQGAN, grid {model.grid}, vocabulary {model.vocab_size}")
    return 0


def train_cmd(args: argparse.Namespace) -> int:
    from halluscope.tokenizers.train import TrainConfig, train

    for name in ("steps", "batch", "resolution", "frames", "codebook_size", "sample_every", "ckpt_every"):
        positive(name.replace("_", "-"), getattr(args, name))
    if args.restart_every < 0:
        raise UserError(f"--restart-every must be 0 (never) or more, got {args.restart_every}")
    if args.downsample and args.kind != "video":
        raise UserError("--downsample is for clip tokenizers (--kind video); an image VQGAN's follows its ch_mult")
    cfg = TrainConfig(kind=args.kind, data=args.data, out=args.out, preset=args.preset, steps=args.steps,
                      batch=args.batch, lr=args.lr, resolution=args.resolution, frames=args.frames,
                      gan_start=args.gan_start, disc_weight=args.disc_weight, perceptual=args.perceptual,
                      sample_every=args.sample_every, ckpt_every=args.ckpt_every, max_minutes=args.max_minutes,
                      restart_every=args.restart_every, seed=args.seed, resume=args.resume, device=args.device,
                      l2_weight=args.l2_weight,
                      extra={k: v for k, v in (("downsample", args.downsample), ("n_embed", args.codebook_size),
                                               ("padding", args.padding), ("causal", args.causal)) if v})
    last = train(cfg)
    if last.get("resumed_finished"):
        print(f"train-tokenizer: {args.out} already finished step {last['step']}; nothing to do")
        return 0
    print(f"train-tokenizer: step {last.get('step')}, psnr {last.get('psnr', float('nan')):.2f} dB, "
          f"codebook usage {last.get('usage', float('nan')):.2f}; model in {args.out}/model")
    return 0


def tokenize_cmd(args: argparse.Namespace) -> int:
    from halluscope.tokenizers.cache import tokenize

    for name in ("batch", "shard_size", "frames"):
        positive(name.replace("_", "-"), getattr(args, name))
    manifest = tokenize(args.tokenizer, args.data, args.out, batch=args.batch, shard_size=args.shard_size,
                        resume=args.resume, frames=args.frames, device=args.device)
    print(f"tokenize: {manifest['count']} examples, grid {tuple(manifest['grid'])}, "
          f"{len(manifest['skipped'])} skipped; cache in {args.out}")
    return 0
