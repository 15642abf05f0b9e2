"""Probe: which train-time levers make fixed targets at n_min learn faster (3 epochs, no aug)?

Trains the same backbone on the same preloaded images with one head/loss variant per run,
everything else fixed: resnet10t with 1 input channel, 32 px, no augmentation, AdamW lr 3e-3
wd 0.05, batch 128, timm cosine schedule with one warm-up epoch, 2 threads, seed 0; v21 targets
at n_min. Prints validation top-1 after every epoch and a final ``RESULT {json}`` line.

    python benchmarks/convergence_probe.py data/glyphs --name base
    python benchmarks/convergence_probe.py data/glyphs --name rm46 --rematch-steps 46 \\
        --rematch-until 0.5
    python benchmarks/convergence_probe.py data/glyphs --name aux128 --aux-dim 128 --aux-assign

The targets are data-assigned (``--assign data``: greedy one-to-one matching of class-mean
embeddings to the system's vectors over the full class x vector cosine matrix, which is fine at
a few thousand classes; lscindex.assignment does the same without that matrix). Classes are
matched before training from the untrained network (eval pass over the training images), then
re-matched after every epoch but the last from the training outputs of that epoch, or, with
``--rematch-steps N``, every N steps from an eval pass, during the first ``--rematch-until``
share of the steps. This is a research script: lscindex.training is the product.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import timm
import timm.scheduler
import torch
import torch.nn.functional as F
from torch import nn

from lscindex import VectorSystem
from lscindex.assignment import fit_geometry, match_classes
from lscindex.data import load_dataset, read_image


def load_tensors(samples: list[tuple[str, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, size, size) uint8 images and (N,) int64 labels."""
    xs = np.zeros((len(samples), 1, size, size), np.uint8)
    ys = np.zeros(len(samples), np.int64)
    for i, (path, label) in enumerate(samples):
        xs[i, 0] = np.asarray(read_image(path).convert("L").resize((size, size)))
        ys[i] = label
    return torch.from_numpy(xs), torch.from_numpy(ys)


def unit_vectors(system: VectorSystem) -> torch.Tensor:
    """Every vector of the system, L2-normalised: (n_vectors, dim) float32."""
    vectors = system.vectors(np.arange(system.n_vectors)).astype(np.float32)
    return torch.from_numpy(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def greedy_assign(means: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Classes to distinct vectors by descending cosine of class mean (full matrix)."""
    sim = (F.normalize(means, dim=1) @ vectors.T).numpy()
    n_classes, n_vectors = sim.shape
    table = -np.ones(n_classes, np.int64)
    used = np.zeros(n_vectors, bool)
    left = n_classes
    for flat in np.argsort(-sim, axis=None):
        c, v = divmod(int(flat), n_vectors)
        if table[c] < 0 and not used[v]:
            table[c], used[v] = v, True
            left -= 1
            if left == 0:
                break
    return torch.from_numpy(table)


class Net(nn.Module):
    def __init__(self, args: argparse.Namespace, n_classes: int, system: VectorSystem) -> None:
        super().__init__()
        self.args = args
        self.backbone = timm.create_model(args.model, num_classes=0, in_chans=1)
        features, dim = self.backbone.num_features, system.dim
        if args.mlp:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(features, features),
                nn.BatchNorm1d(features),
                nn.ReLU(),
                nn.Linear(features, dim),
            )
        else:
            self.head = nn.Linear(features, dim)
        self.bn = nn.BatchNorm1d(dim, affine=args.bn_affine) if args.bn else nn.Identity()
        if args.loss == "bneck" or args.warm_head:  # a learned softmax head on the n_min output
            self.classifier = nn.Linear(dim, n_classes)
        self.vectors = unit_vectors(system)
        if args.center:  # zero-mean lattice: subtract the mean of all vectors, renormalise
            self.vectors = F.normalize(self.vectors - self.vectors.mean(0, keepdim=True), dim=1)
        self.table = torch.from_numpy(system.vector_ids(np.arange(n_classes)).astype(np.int64))
        if args.targets:  # fixed targets from a file: (n_classes, dim) rows, one per class
            t = torch.from_numpy(np.load(args.targets)).float()
            self.vectors = F.normalize(t, dim=1)
            self.table = torch.arange(n_classes)
        self.sums = torch.zeros(n_classes, dim)
        self.warming = bool(args.warm_head)
        if args.aux_dim:
            self.aux_system = VectorSystem.create(args.aux_kind, n_classes, dim=args.aux_dim)
            self.aux_targets_of = self.aux_system
            self.aux = nn.Linear(features, args.aux_dim)
            self.aux_sums = torch.zeros(n_classes, args.aux_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        if self.args.aux_dim and self.training:
            self.aux_raw = self.aux(h)
            self.aux_out = F.normalize(self.aux_raw, dim=1)
        self.raw = self.bn(self.head(h))
        if self.args.center_out:
            self.raw = self.raw - self.raw.mean(1, keepdim=True)
        return F.normalize(self.raw, dim=1)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        args = self.args
        self.sums.index_add_(0, y, out.detach())
        targets = self.vectors[self.table]
        rows = torch.arange(len(y))
        if args.loss == "bneck" or self.warming:
            loss = F.cross_entropy(self.classifier(self.raw), y)
        elif args.loss == "cos":
            loss = (1 - (out * targets[y]).sum(1)).mean()
        elif args.loss == "zsm":  # softmax over the assigned targets, unnormalised output
            loss = F.cross_entropy(args.scale * self.raw @ targets.T, y)
        elif args.loss == "sm":  # softmax over all assigned targets, additive margin
            logits = args.scale * out @ targets.T
            logits[rows, y] -= args.scale * args.margin
            loss = F.cross_entropy(logits, y)
        elif args.loss == "hard":  # softmax over the true and the nearest wrong targets
            sim = out @ targets.T
            wrong = sim.detach().clone()
            wrong[rows, y] = -9
            idx = torch.cat([y[:, None], wrong.topk(args.negs, dim=1).indices], 1)
            logits = args.scale * sim.gather(1, idx)
            logits[:, 0] -= args.scale * args.margin
            loss = F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long))
        elif args.loss in ("lsm", "lzsm"):  # cosine + softmax over every lattice vector
            z = out if args.loss == "lsm" else self.raw
            logits = args.scale * z @ self.vectors.T
            loss = (1 - (out * targets[y]).sum(1)).mean()
            loss = loss + args.sm_weight * F.cross_entropy(logits, self.table[y])
        elif args.loss == "hinge":  # cosine plus a hinge against the nearest wrong target
            sim = out @ targets.T
            pos = sim[rows, y]
            wrong = sim.detach().clone()
            wrong[rows, y] = -9
            neg = sim[rows, wrong.argmax(1)]
            loss = (1 - pos).mean() + args.sm_weight * F.relu(args.margin + neg - pos).mean()
        else:
            raise SystemExit(f"unknown --loss {args.loss!r}")
        if args.aux_dim:
            self.aux_sums.index_add_(0, y, self.aux_out.detach())
            aux_t = torch.from_numpy(self.aux_targets_of.targets(y.numpy()))
            if args.aux_loss == "cos":
                loss = loss + args.aux_weight * (1 - (self.aux_out * aux_t).sum(1)).mean()
            else:  # factorised softmax: which coordinate is +1, which is -1 (v11 targets)
                plus, minus = aux_t.argmax(1), aux_t.argmin(1)
                loss = loss + args.aux_weight * (
                    F.cross_entropy(self.aux_raw, plus) + F.cross_entropy(-self.aux_raw, minus)
                )
        return loss

    def top1(self, out: torch.Tensor) -> np.ndarray:
        if self.args.loss == "bneck" or self.warming:
            return self.classifier(self.raw).argmax(1).numpy()
        return (out @ self.vectors[self.table].T).argmax(1).numpy()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--name", default="probe")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kind", default="v21")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--assign", choices=["codec", "data0", "data", "fixed"], default="data")
    ap.add_argument("--rematch-until", type=float, default=1.0)
    ap.add_argument("--rematch-steps", type=int, default=0)
    ap.add_argument("--bn", action="store_true", help="BatchNorm1d on the projection")
    ap.add_argument("--bn-affine", action="store_true")
    ap.add_argument("--mlp", action="store_true", help="a 2-layer MLP projection")
    ap.add_argument("--head-lr", type=float, default=1.0, help="lr multiplier of the projection")
    ap.add_argument(
        "--loss",
        choices=["cos", "sm", "zsm", "hard", "hinge", "bneck", "lsm", "lzsm"],
        default="cos",
    )
    ap.add_argument("--scale", type=float, default=16)
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--negs", type=int, default=32)
    ap.add_argument("--sm-weight", type=float, default=1.0)
    ap.add_argument(
        "--warm-head",
        type=int,
        default=0,
        help="epochs with a learned softmax head on the n_min output before the fixed targets",
    )
    ap.add_argument("--center", action="store_true", help="zero-mean lattice targets")
    ap.add_argument("--center-out", action="store_true", help="subtract each output's mean")
    ap.add_argument("--targets", default="", help=".npy of fixed class targets (no assignment)")
    ap.add_argument(
        "--assign-from",
        default="",
        help=".npy class geometry to fit onto the lattice once (Procrustes + greedy), then fixed",
    )
    ap.add_argument(
        "--assign-feat",
        choices=["", "init", "epoch"],
        default="",
        help="fit backbone-feature class means (PCA to dim) onto the lattice: once, or again "
        "after each of the first --refit-epochs epochs",
    )
    ap.add_argument(
        "--bn-calib",
        type=int,
        default=0,
        help="train-mode batches that set the BatchNorm statistics before a fit",
    )
    ap.add_argument(
        "--init-head", action="store_true", help="solve the projection by least squares after a fit"
    )
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--head-scale", type=float, default=0.0, help="0: the norm of the default init")
    ap.add_argument(
        "--refit-epochs",
        type=int,
        default=2,
        help="--assign-feat epoch: refit after this many epochs",
    )
    ap.add_argument("--refit-margin", type=float, default=0.05)
    ap.add_argument(
        "--whiten", action="store_true", help="--assign-feat: whiten the PCA coordinates"
    )
    ap.add_argument(
        "--feat-stages",
        action="store_true",
        help="--assign-feat: pooled features of every stage, side by side",
    )
    ap.add_argument(
        "--then-rematch",
        action="store_true",
        help="--assign-feat: re-match from the outputs after each epoch of the first half, as "
        "the data assignment does",
    )
    ap.add_argument("--save-head", default="", help="bneck: save the learned class head .npy")
    ap.add_argument("--aux-dim", type=int, default=0, help="auxiliary head width (0: none)")
    ap.add_argument("--aux-kind", default="v21")
    ap.add_argument("--aux-loss", choices=["cos", "fsm"], default="cos")
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--aux-assign", action="store_true", help="data-assign the auxiliary head")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.data)
    n_classes = splits.n_classes
    xtr, ytr = load_tensors(splits.train, 32)
    xva, yva = load_tensors(splits.val, 32)
    system = VectorSystem.create(args.kind, n_classes, dim=args.dim)
    torch.manual_seed(0)
    net = Net(args, n_classes, system)
    head = list(net.head.parameters()) + list(net.bn.parameters())
    head_ids = {id(p) for p in head}
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in net.parameters() if id(p) not in head_ids]},
            {"params": head, "lr": args.lr * args.head_lr},
        ],
        lr=args.lr,
        weight_decay=0.05,
    )
    steps = math.ceil(len(ytr) / args.bs)
    sched, _ = timm.scheduler.create_scheduler_v2(
        opt,
        sched="cosine",
        num_epochs=args.epochs,
        warmup_epochs=1,
        warmup_lr=args.lr * 0.01,
        min_lr=args.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - 0.5) / 0.5

    def class_means() -> None:
        """Eval pass over the training images into net.sums (and net.aux_sums)."""
        net.eval()
        net.sums.zero_()
        with torch.no_grad():
            for i in range(0, len(ytr), 512):
                x, y = norm(xtr[i : i + 512]), ytr[i : i + 512]
                net.sums.index_add_(0, y, net(x))
                if args.aux_dim:
                    h = net.backbone(x)
                    net.aux_sums.index_add_(0, y, F.normalize(net.aux(h), dim=1))
        net.train()

    def assign_aux() -> None:
        table = match_classes(net.aux_system, net.aux_sums.numpy())
        net.aux_targets_of = net.aux_system.with_assignment(table)

    def switch_to_targets() -> int:
        """End of the warm-up: rotate the projection so the class means sit on targets."""
        class_means()
        unit = F.normalize(net.sums, dim=1)
        rot = torch.eye(unit.shape[1])
        old = net.table.clone()
        for _ in range(10):  # alternate: match the rotated means, then the best rotation
            table = greedy_assign(unit @ rot.T, net.vectors)
            u, _, vh = torch.linalg.svd(net.vectors[table].T @ unit)
            rot = u @ vh
        net.table = greedy_assign(unit @ rot.T, net.vectors)
        cos = ((unit @ rot.T) * net.vectors[net.table]).sum(1)
        print(f"  switch: mean cosine to targets {float(cos.mean()):.3f}", flush=True)
        with torch.no_grad():
            net.head.weight.copy_(rot @ net.head.weight)
            net.head.bias.copy_(rot @ net.head.bias)
        for p in net.head.parameters():  # the moments belong to the old basis
            opt.state.pop(p, None)
        net.warming = False
        net.sums.zero_()
        return int((old != net.table).sum())

    def fit_onto_lattice(geom: torch.Tensor) -> tuple[torch.Tensor, float]:
        table, _, fit = fit_geometry(system, geom.numpy(), centered=args.center)
        net.rotation = torch.from_numpy(rot)
        return torch.from_numpy(table), fit

    def calibrate_bn(batches: int) -> None:
        """Running BatchNorm statistics from train-mode passes (no gradient), so that the eval-mode
        features the fit reads are the ones training sees."""
        bns = [m for m in net.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(123))
        net.train()
        with torch.no_grad():
            for i in range(batches):
                net.backbone(norm(xtr[order[i * args.bs : (i + 1) * args.bs]]))
        for m in bns:
            m.momentum = 0.1

    def pooled(x: torch.Tensor) -> torch.Tensor:
        if not args.feat_stages:
            return net.backbone(x)
        # every stage's feature map, average-pooled and L2-normalised, side by side
        maps = net.backbone.forward_intermediates(x, intermediates_only=True)
        return torch.cat([F.normalize(m.mean((2, 3)), dim=1) for m in maps], dim=1)

    def features() -> torch.Tensor:
        net.eval()
        with torch.no_grad():
            h = torch.cat([pooled(norm(xtr[i : i + 512])) for i in range(0, len(ytr), 512)])
        net.train()
        return h

    def feature_geometry(h: torch.Tensor) -> torch.Tensor:
        """Class means of the backbone's pooled features, centred, PCA to the system's dim."""
        sums = torch.zeros(n_classes, h.shape[1]).index_add_(0, ytr, h)
        counts = torch.bincount(ytr, minlength=n_classes).clamp(min=1)[:, None].float()
        means = sums / counts
        means = means - means.mean(0, keepdim=True)
        _, sv, vh = torch.linalg.svd(means, full_matrices=False)
        geom = means @ vh[: net.vectors.shape[1]].T
        if args.whiten:  # every principal direction with the same spread
            geom = geom / sv[: net.vectors.shape[1]].clamp(min=1e-12)
        return geom

    def solve_head(h: torch.Tensor) -> None:
        """Least-squares projection from the features to each sample's target (ridge), scaled to
        the output norm the current head gives."""
        t = net.vectors[net.table][ytr]
        mu, tbar = h.mean(0), t.mean(0)
        hc = (h - mu).double()
        gram = hc.T @ hc
        gram += (
            args.ridge * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
        )
        w = torch.linalg.solve(gram, hc.T @ (t - tbar).double()).T.float()
        b = tbar - w @ mu
        with torch.no_grad():
            before = net.head(h).norm(dim=1).mean()
            after = (h @ w.T + b).norm(dim=1).mean()
            scale = before / after if args.head_scale == 0 else args.head_scale
            net.head.weight.copy_(w * scale)
            net.head.bias.copy_(b * scale)
            fit = F.cosine_similarity(net.head(h), t, dim=1).mean()
        for p in net.head.parameters():
            opt.state.pop(p, None)
        print(
            f"  head solved: train cosine to targets {float(fit):.3f} (scale {float(scale):.3g})",
            flush=True,
        )

    def refit(anchored: bool) -> int:
        if args.bn_calib:
            calibrate_bn(args.bn_calib)
        h = features()
        old = net.table.clone()
        table, _, fit = fit_geometry(
            system,
            feature_geometry(h).numpy(),
            centered=args.center,
            current=old.numpy() if anchored else None,
            margin=args.refit_margin if anchored else 0.0,
        )
        net.table = torch.from_numpy(table)
        print(
            f"  fit: mean cosine of the fitted geometry to its lattice targets {fit:.3f}",
            flush=True,
        )
        if args.init_head:
            solve_head(h)
        return int((old != net.table).sum())

    if args.assign_feat:
        refit(anchored=False)
        args.assign = "data" if args.then_rematch else "fixed"
    if args.targets:
        args.assign = "fixed"
    if args.assign_from:  # fit a given class geometry onto the lattice, then keep it fixed
        unit = F.normalize(torch.from_numpy(np.load(args.assign_from)).float(), dim=1)
        rot = torch.eye(net.vectors.shape[1], unit.shape[1])  # (dim, source dim), orthonormal
        for _ in range(20):
            table = greedy_assign(unit @ rot.T, net.vectors)
            u, _, vh = torch.linalg.svd(net.vectors[table].T @ unit, full_matrices=False)
            rot = u @ vh
        net.table = greedy_assign(unit @ rot.T, net.vectors)
        cos = ((unit @ rot.T) * net.vectors[net.table]).sum(1)
        fit = float(cos.mean())
        print(f"  assign-from: mean cosine of the rotated geometry to its targets {fit:.3f}")
        args.assign = "fixed"
    if args.assign.startswith("data") and not args.warm_head and not args.assign_feat:
        class_means()
        net.table = greedy_assign(net.sums, net.vectors)
        if args.aux_dim and args.aux_assign:
            assign_aux()
    net.sums.zero_()
    g, accs = 0, []
    for ep in range(args.epochs):
        net.train()
        perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(ep))
        t0, loss_sum = time.time(), 0.0
        for i in range(steps):
            idx = perm[i * args.bs : (i + 1) * args.bs]
            loss = net.loss(net(norm(xtr[idx])), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            g += 1
            sched.step_update(num_updates=g)
            loss_sum += float(loss.detach())
            due = args.rematch_steps and g % args.rematch_steps == 0
            if due and g <= args.rematch_until * steps * args.epochs:
                class_means()
                old = net.table.clone()
                net.table = greedy_assign(net.sums, net.vectors)
                net.sums.zero_()
                print(f"  step {g} changed {int((old != net.table).sum())}", flush=True)
        changed = 0
        if args.assign_feat == "epoch" and ep + 1 <= args.refit_epochs and ep + 1 < args.epochs:
            changed = refit(anchored=True)
        if args.warm_head and ep + 1 == args.warm_head:
            changed = switch_to_targets()
        last = ep + 1 == args.epochs
        in_window = (ep + 1) / args.epochs <= args.rematch_until
        warm = ep + 1 <= args.warm_head
        if args.assign == "data" and not args.rematch_steps and in_window and not last and not warm:
            old = net.table.clone()
            net.table = greedy_assign(net.sums, net.vectors)
            changed = int((old != net.table).sum())
            if args.aux_dim and args.aux_assign:
                assign_aux()
        net.sums.zero_()
        if args.aux_dim:
            net.aux_sums.zero_()
        net.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(yva), 512):
                pred = net.top1(net(norm(xva[i : i + 512])))
                hits += int((pred == yva[i : i + 512].numpy()).sum())
        acc = 100 * hits / len(yva)
        accs.append(round(acc, 1))
        print(
            f"{args.name} ep{ep + 1} loss {loss_sum / steps:.4f} top1 {acc:.1f} "
            f"changed {changed} ({time.time() - t0:.0f}s)",
            flush=True,
        )
    if args.save_head:
        np.save(args.save_head, net.classifier.weight.detach().numpy())
    print("RESULT", json.dumps({"name": args.name, "accs": accs}), flush=True)


if __name__ == "__main__":
    main()
