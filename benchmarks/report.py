"""The markdown table and the tokens/s plot of a list of benchmark records."""

from __future__ import annotations


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def markdown_table(records: list[dict], meta: dict) -> str:
    bw = meta["bandwidth"]
    lines = [
        f"Shape `{meta['shape']}`, src_len {meta['src_len']}, new_tokens {meta['new_tokens']}, beams {meta['beams']}, "
        f"{meta['threads']} threads; machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']} GiB; memory bandwidth {bw['read_gbs']:.1f} GB/s read "
        f"({bw['copy_gbs']:.1f} GB/s copy).",
        "Decode-step floor (decoder weights + LM head read once per token at the read bandwidth): "
        + ", ".join(f"{p} {meta['floor'][p]['ms']:.2f} ms ({meta['floor'][p]['bytes'] / 1e9:.2f} GB)"
                    for p in meta["floor"]) + ".",
        "",
        "| engine | backend | precision | batch | encoder ms | ms/token p50 | ms/token p90 | p50 / floor | "
        "tokens/s | compile s (cold / cached) | load s | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if r.get("status") != "ok":
            lines.append(f"| {r['engine']} | {r.get('backend') or '–'} | {r.get('amp') or '–'} | "
                         f"{r['batch_size']} | {r.get('status')}: {r.get('note', '')} |" + " – |" * 7)
            continue
        compile_s = "–" if r["compile_s"] is None else f"{r['compile_s']:.1f} / {r['compile_cached_s']:.2f}"
        lines.append(
            f"| {r['engine']} | {r['backend']} | {r['amp']} | {r['batch_size']} | {_num(r['encoder_ms'])} | "
            f"{_num(r['ms_per_token_p50'], 2)} | {_num(r['ms_per_token_p90'], 2)} | "
            f"{_num(r['p50_over_floor'], 2)}× | {_num(r['tokens_per_s'])} | {compile_s} | {_num(r['load_s'])} | "
            f"{_num(r['peak_rss_mb'], 0)} |")
    return "\n".join(lines)


def plot(records: list[dict], meta: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    engines = sorted({r["engine"] for r in records}, key=[r["engine"] for r in records].index)
    for engine in engines:
        points = sorted((r["batch_size"], r["tokens_per_s"]) for r in records
                        if r["engine"] == engine and r.get("status") == "ok" and r.get("tokens_per_s"))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
    ax.set_xscale("log", base=2)
    sizes = sorted({r["batch_size"] for r in records})
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{meta['shape']}: src {meta['src_len']}, {meta['new_tokens']} new tokens, "
                 f"{meta['machine']['cores']} cores")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
