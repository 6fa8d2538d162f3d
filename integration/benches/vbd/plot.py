#!/usr/bin/env python3
"""Plots the vbd bench's result: each row's figure for qemu-nbd and for the
xenring vbd path, normalised to qemu-nbd (so every row fits one axis), with
the measured values written on the bars.

    pip install matplotlib
    python3 integration/benches/vbd/plot.py [target/xenring-bench/vbd.csv] [out.png]
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "target/xenring-bench/vbd.csv"
out = sys.argv[2] if len(sys.argv) > 2 else "integration/benches/vbd/vbd.png"
rows = list(csv.DictReader(open(src)))
labels = [f"{r['client']}\n{r['row']}" for r in rows]
ratio = [float(r["xenring"]) / float(r["qemu_nbd"]) for r in rows]

fig, ax = plt.subplots(figsize=(11, 4.8))
x = range(len(rows))
w = 0.38
ax.bar([i - w / 2 for i in x], [1.0] * len(rows), w, label="qemu-nbd on the image", color="#999999")
ax.bar([i + w / 2 for i in x], ratio, w, label="NBD -> vbd frontend -> blkif -> vbd backend -> image", color="#3b6ea8")
for i, r in enumerate(rows):
    ax.text(i - w / 2, 1.02, f"{float(r['qemu_nbd']):.0f}", ha="center", fontsize=7, rotation=90, va="bottom")
    ax.text(i + w / 2, ratio[i] + 0.02, f"{float(r['xenring']):.0f} {r['unit']}", ha="center", fontsize=7, rotation=90, va="bottom")
ax.axhline(0.8, color="#c0392b", linestyle="--", linewidth=1, label="target 0.8x")
ax.set_xticks(list(x))
ax.set_xticklabels(labels, fontsize=7)
ax.set_ylabel("relative to qemu-nbd (higher is better)")
ax.set_ylim(0, max(ratio + [1.0]) * 1.45)
ax.set_title("xenring block device vs qemu-nbd, same NBD clients, same image (median of alternating runs)")
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
fig.savefig(out, dpi=110)
print("written", out)
