"""Model benchmarks (issue 4, "Performance"): ratios side by side, JSON on stdout.

    .venv/bin/python bench/model.py [--checkpoint models/demo] [--quick]

* study-to-draft latency (excluding the DICOM read): forward + greedy report, fp32 vs
  dynamic int8 (torch.ao dynamic quantization of nn.Linear), and fp32 vs the same weights
  on the stock CPU operators the fast path replaces (PyTorch's own convolution pick, which
  is slow_conv3d for one case's small maps, and avg_pool3d / max_pool3d pooling: the draft
  as it ran until stop 24), with the fp32 draft's CPU time
  by operator group (pooling, convolution, linear, attention, other; torch.profiler) and the
  speed-up int8 could give at most if nn.Linear took no time;
* KV-cache decoding vs recomputation for 256 tokens;
* long EMR at 16K tokens: memory-token recurrence vs the same model with full attention over
  all EMR tokens (both through scaled_dot_product_attention): time, peak RSS (separate
  processes), EMR tokens handed to fusion / decoder;
* long-note cases (``configs/synth/long_notes.yaml``: generated cases whose note carries a
  16,500+ word admission history, cut to ``--tokens``): the findings decisions, the EMR
  context classes and the Findings / Impression text of the memory-token model against the
  same weights with full attention over every EMR token;
* training throughput (cases/s) on CPU, and with ``--cuda`` on the GPU (fp32 and bf16
  autocast, batch 8 and 64) as ratios to the CPU run of the same process;
* the measurements on the CT (``multimodal.measure``: the size of a called nodule or mass,
  and since stop 32 the fluid band around the heart, run by every draft): on generated body
  cases (``configs/synth/small_fleischner_body.yaml``, test split, ``--measure-cases``), their
  time against the draft (forward + greedy report) of the same case, one after the other, for
  the cases that call a nodule or mass and for every case (``all_cases``).

``--only NAME`` runs one of latency, kv_cache, long_emr, long_cases, train_throughput,
measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(checkpoint: str | None) -> tuple[Any, Any]:
    from multimodal.checkpoint import load_checkpoint
    from multimodal.config import load_model_config
    from multimodal.model import FusionModel

    if checkpoint and (Path(checkpoint) / "model.safetensors").is_file():
        model, cfg, _k, _t, _m = load_checkpoint(checkpoint)
        return model, cfg
    cfg = load_model_config(ROOT / "configs/model/demo.yaml")
    torch.manual_seed(0)
    return FusionModel(cfg).eval(), cfg


def _vocab(checkpoint: str | None) -> tuple[str, ...]:
    """The checkpoint's tokenizer vocabulary (the repeat guard's sentence ends); none for
    the random-weight fallback."""
    from multimodal.tokenizer import WordTokenizer

    if checkpoint and (Path(checkpoint) / "vocab.json").is_file():
        return WordTokenizer.load(Path(checkpoint) / "vocab.json").vocab
    return ()


def _input(cfg: Any, t: int, b: int = 1) -> Any:
    from multimodal.outputs import ModelInput

    g = torch.Generator().manual_seed(0)
    return ModelInput(ct_present=torch.ones(b, dtype=torch.bool),
                      emr_present=torch.ones(b, dtype=torch.bool),
                      ct=torch.rand((b, len(cfg.ct.windows), *cfg.ct.grid_shape), generator=g),
                      emr_ids=torch.randint(5, 500, (b, t), generator=g),
                      emr_mask=torch.ones(b, t, dtype=torch.bool))


def _time(fn: Any, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def stock_operators(model: Any) -> Any:
    """A copy of ``model`` on the stock operators that :class:`multimodal.layers.Conv3d` and
    :func:`multimodal.transforms.block_stats` replace (the baseline of the CPU fast path)."""
    import copy
    import types

    import torch.nn.functional as F

    from multimodal.layers import Conv3d

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, Conv3d):
            # the stock operator: same parameters, torch's own forward (the baseline)
            mod.__class__ = torch.nn.Conv3d  # type: ignore[assignment]
    stem = m.stems["ct"]

    def pool(self: Any, ct: torch.Tensor) -> torch.Tensor:
        k = self.cfg.pre_pool
        if not self.cfg.pooled:
            return ct
        parts = {"mean": lambda: F.avg_pool3d(ct, k), "max": lambda: F.max_pool3d(ct, k),
                 "min": lambda: -F.max_pool3d(-ct, k)}
        return torch.stack([parts[s]() for s in self.cfg.pool_stats], 2).flatten(1, 2)

    stem.pool = types.MethodType(pool, stem)
    return m


def latency(model: Any, cfg: Any, reps: int, vocab: Sequence[str] = ()) -> dict[str, Any]:
    """fp32 draft (forward + greedy report with the checkpoint's repeat guard, as `medassist
    report` writes it) against the stock operators, int8, and the same draft unguarded."""
    from multimodal.decoder import RepeatGuard
    from multimodal.image_pass import without_note

    x = _input(cfg, 400)
    guard = RepeatGuard.for_vocab(cfg.decoder.no_repeat_ngram, vocab) if vocab else None

    def draft(m: Any, g: Any = guard) -> None:
        with torch.no_grad():
            out = m(x)
            m.generate(out, max_new=cfg.decoder.max_len - 1, guard=g)

    def draft_image() -> None:
        """decoder.image_pass: a second forward without the note, the text from it."""
        with torch.no_grad():
            model(x)
            img = model(without_note(x))
            model.generate(img, max_new=cfg.decoder.max_len - 1, guard=guard)

    stock = stock_operators(model)
    # interleaved, so all see the same machine load
    fp32 = stock_s = bare = image = 0.0
    for _ in range(3):
        fp32 += _time(lambda: draft(model), reps) / 3
        stock_s += _time(lambda: draft(stock), reps) / 3
        bare += _time(lambda: draft(model, None), reps) / 3
        image += _time(draft_image, reps) / 3
    with torch.no_grad():
        same = model(x).presence_prob, stock(x).presence_prob
        # the two replaced parts alone, same inputs: the pre-pool of the full-grid volume,
        # and the stem's and dense detector's convolutions on the pooled volume
        pooled = model.stems["ct"].pool(x.ct)

        def convs(m: Any) -> None:
            first = m.stems["ct"].forward_map(pooled)[1]
            if m.dense is not None:
                m.dense(first)

        parts = {"pool_s": _time(lambda: model.stems["ct"].pool(x.ct), reps),
                 "native_pool_s": _time(lambda: stock.stems["ct"].pool(x.ct), reps),
                 "conv_s": _time(lambda: convs(model), reps),
                 "native_conv_s": _time(lambda: convs(stock), reps)}
    shares = op_shares(lambda: draft(model))
    q = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        model, {torch.nn.Linear}, dtype=torch.qint8)
    int8 = _time(lambda: draft(q), reps)
    # where int8 costs: the forward pass and the decoding alone, fp32 / all int8 / int8 for
    # every nn.Linear but the decoder's (one token at a time), interleaved
    linears = {n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    q_enc = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        model, {n for n in linears if not n.startswith("decoder.")}, dtype=torch.qint8)
    split = {k: [0.0, 0.0] for k in ("fp32", "int8", "int8_no_decoder")}
    for _ in range(3):
        for k, m in (("fp32", model), ("int8", q), ("int8_no_decoder", q_enc)):
            with torch.no_grad():
                o = m(x)

                def gen(m: Any = m, o: Any = o) -> None:
                    m.generate(o, max_new=cfg.decoder.max_len - 1, guard=guard)

                split[k][0] += _time(lambda m=m: m(x), reps) / 3
                split[k][1] += _time(gen, reps) / 3
    with torch.no_grad():
        a, b = model(x), q(x)
    return {"fp32_s": round(fp32, 4),
            "repeat_guard": None if guard is None else guard.n,
            "fp32_without_guard_s": round(bare, 4),
            # the draft with decoder.image_pass (two forward passes), against fp32_s
            "image_pass_s": round(image, 4),
            "image_pass_x_fp32": round(image / fp32, 3),
            "native_conv_pool_s": round(stock_s, 4),
            "fast_path_speedup": round(stock_s / fp32, 3),
            "fast_path_max_prob_diff": round(float((same[0] - same[1]).abs().max()), 6),
            **{k: round(v, 5) for k, v in parts.items()},
            "int8_s": round(int8, 4),
            "int8_speedup": round(fp32 / int8, 3),
            "int8_max_prob_diff": round(float((a.presence_prob - b.presence_prob).abs().max()),
                                        4),
            "forward_decode_s": {k: [round(v[0], 4), round(v[1], 4)] for k, v in split.items()},
            "fp32_op_shares": shares,
            # Amdahl: the draft's speed-up if every nn.Linear took no time at all
            "int8_speedup_bound": round(1.0 / max(1e-6, 1.0 - shares["linear"]), 2)}


#: operator groups of :func:`op_shares` (substrings of the profiler's aten op names)
OP_GROUPS = {"pooling": ("pool",), "convolution": ("conv",),
             "linear": ("addmm", "linear", "aten::mm", "bmm", "matmul"),
             "attention": ("attention",)}


def op_shares(fn: Callable[[], None]) -> dict[str, float]:
    """Share of ``fn``'s self CPU time by operator group (torch.profiler, one run after a
    warm-up): what dynamic int8 of nn.Linear can speed up at most."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    acc = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    for e in prof.key_averages():
        name = e.key.lower()
        group = next((g for g, keys in OP_GROUPS.items() if any(k in name for k in keys)),
                     "other")
        acc[group] += float(e.self_cpu_time_total)
    total = sum(acc.values()) or 1.0
    return {g: round(v / total, 3) for g, v in acc.items()}


def kv_cache(model: Any, cfg: Any, reps: int) -> dict[str, Any]:
    with torch.no_grad():
        out = model(_input(cfg, 100))
    mem, mask = out.memory, out.memory_mask
    dec = model.decoder
    n = min(256, cfg.decoder.max_len - 1)

    def run(cache: bool) -> Any:
        # force exactly n steps: decode from the memory without stopping at EOS
        from multimodal.tokenizer import BOS

        with torch.no_grad():
            ids = torch.full((1, 1), BOS, dtype=torch.long)
            st = dec.start(mem, mask) if cache else None
            for _ in range(n):
                lg = dec.step(ids[:, -1:], st) if st is not None else dec(ids, mem, mask)[:, -1]
                ids = torch.cat([ids, lg.argmax(-1, keepdim=True)], 1)
            return ids

    same = bool(torch.equal(run(True), run(False)))
    c = _time(lambda: run(True), reps)
    r = _time(lambda: run(False), reps)
    return {"tokens": n, "cache_s": round(c, 4), "recompute_s": round(r, 4),
            "speedup": round(r / c, 2), "identical_tokens": same}


def _peak_rss_kb() -> int:
    """This process's peak RSS (kB): VmHWM, which starts afresh at exec; ru_maxrss (the
    fallback off Linux) keeps the parent's high-water mark across fork and exec, so a child
    started by a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def long_emr_child(mode: str, tokens: int, checkpoint: str | None) -> dict[str, Any]:
    model, cfg = _model(checkpoint)
    if mode == "full":
        cfg = dataclasses.replace(cfg, long_emr=dataclasses.replace(cfg.long_emr,
                                                                    full_attention=True))
        m2 = type(model)(cfg)
        m2.load_state_dict(model.state_dict())
        model = m2.eval()
    from multimodal.image_pass import image_pass

    x = _input(cfg, tokens)
    base = _peak_rss_kb()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(x)
        # as the draft writes it: with decoder.image_pass, from a pass without the note
        ids = model.generate(image_pass(model, cfg, x, out), max_new=cfg.decoder.max_len - 1)
    dt = time.perf_counter() - t0
    peak = _peak_rss_kb()
    n_q = len(cfg.heads.labels) + cfg.fusion.n_extra_queries
    emr_tokens = out.memory.shape[1] - n_q - cfg.ct.n_patches
    return {"seconds": round(dt, 3), "peak_rss_mb": round(peak / 1024, 1),
            "rss_increase_mb": round((peak - base) / 1024, 1),
            "emr_tokens_to_fusion": int(emr_tokens),
            "image_pass": cfg.decoder.image_pass,
            "presence": [round(float(v), 4) for v in out.presence_prob[0]],
            "report_ids": ids[0].tolist()}


def long_emr(tokens: int, checkpoint: str | None) -> dict[str, Any]:
    res = {}
    for mode in ("memory", "full"):
        cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(tokens)]
        if checkpoint:
            cmd += ["--checkpoint", checkpoint]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res[mode] = json.loads(out.stdout)
    m, f = res["memory"], res["full"]
    return {
        "tokens": tokens, "image_pass": m["image_pass"],
        "memory": {k: v for k, v in m.items()
                   if k not in ("presence", "report_ids", "image_pass")},
        "full": {k: v for k, v in f.items() if k not in ("presence", "report_ids", "image_pass")},
        "time_ratio": round(m["seconds"] / f["seconds"], 3),
        "rss_increase_ratio": round(m["rss_increase_mb"] / max(f["rss_increase_mb"], 1e-6), 3),
        "token_ratio": round(m["emr_tokens_to_fusion"] / f["emr_tokens_to_fusion"], 4),
        "same_findings": [p > 0.5 for p in m["presence"]] == [p > 0.5 for p in f["presence"]],
        "same_report": m["report_ids"] == f["report_ids"],
    }


def statements(text: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    """What a text states, whatever its wording: each finding it affirms, one sentence at a
    time, with the sides, lobes and largest size that sentence names (sorted), and the
    findings it only negates (``medassist.labeler``)."""
    from medassist.labeler import label_text, stated_lobes, stated_sides, stated_size_mm

    affirmed: list[tuple[Any, ...]] = []
    negated: set[str] = set()
    for sent in label_text(text):
        for label, pos in sent.labels.items():
            if pos:
                affirmed.append((label, sorted(stated_sides(sent.text)),
                                 sorted(stated_lobes(sent.text)), stated_size_mm(sent.text)))
            else:
                negated.add(label)
    return sorted(affirmed, key=repr), sorted(negated - {a[0] for a in affirmed})


def long_cases(n: int, checkpoint: str | None, tokens: int, seed: int = 11,
               image_pass: bool | None = None) -> dict[str, Any]:
    """Memory tokens vs full attention (same weights) on ``n`` generated long-note cases, each
    note cut to its first ``tokens`` tokens: do the findings decisions, context classes,
    Findings and Impression text agree?  The text is conditioned as the drafts condition it
    (the context class the note's history decides where it does, read by rule from the cut
    note: ``medassist.drafting.note_context``); ``*_head`` keys: on the context head's
    decisions alone.  ``same_*_text`` / ``same_impression`` compare the words;
    ``same_*_statements`` what the texts state (:func:`statements`: the findings affirmed
    with their sides, lobes and sizes, and those negated), so that "no mediastinal
    lymphadenopathy" and "no enlarged mediastinal lymph nodes" agree.  ``image_pass`` (None:
    the checkpoint's ``decoder.image_pass``): the text, and the locations and sizes it
    states, from the same weights without the note (``multimodal.image_pass``), as the
    drafts write it."""
    from medassist.drafting import generate, note_context, split_sections
    from medassist.history import NoteHistory, read_history
    from medassist.model_data import record_sample, synth_records
    from medassist.model_eval import EMR_DEPENDENT
    from multimodal.checkpoint import load_checkpoint
    from multimodal.context import context_decisions
    from multimodal.heads import predict_findings
    from multimodal.image_pass import image_geometry, image_pass_outputs
    from multimodal.training import predict

    if not (checkpoint and (Path(checkpoint) / "model.safetensors").is_file()):
        return {"skipped": "needs a trained checkpoint (text and thresholds)"}
    model, cfg, _k, tok, _m = load_checkpoint(checkpoint)
    if image_pass is not None:
        cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder,
                                                                   image_pass=image_pass))
    fcfg = dataclasses.replace(cfg, long_emr=dataclasses.replace(cfg.long_emr,
                                                                 full_attention=True))
    full = type(model)(fcfg)
    full.load_state_dict(model.state_dict())
    full.eval()
    recs = list(synth_records(str(ROOT / "configs/synth/long_notes.yaml"), cfg, seed, n,
                              "test"))
    samples = [record_sample(r, cfg, tok, tokens, with_report=False) for r in recs]
    # the history the cut note states (the text the model reads: up to its last token's end)
    hists = [NoteHistory(read_history((r.emr or "")[: int(smp["emr_spans"][-1][1])]).stated)
             if smp["emr_spans"] is not None and len(smp["emr_spans"]) else None
             for r, smp in zip(recs, samples, strict=True)]
    runs: dict[str, Any] = {}
    for name, m, c in (("memory", model, cfg), ("full", full, fcfg)):
        cases = []
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = predict(m, samples, batch_size=1)
            # the pass the text is written from (decoder.image_pass: without the note)
            mems = image_pass_outputs(m, c, samples, outs, batch_size=1)
            for o, mem, hist in zip(outs, mems, hists, strict=True):
                preds = predict_findings(o, c.heads, c.ct)
                if mem is not o:
                    preds = image_geometry(preds, mem, c.heads)
                drafted, _ = note_context(o, c, preds, [hist])
                head_ctx = (None if o.context_logits is None
                            else context_decisions(o.context_logits, o.emr_used))
                text = tok.decode(generate(m, mem, c.decoder.max_len - 1, preds,
                                           tok.vocab, drafted)[0].tolist())
                head_text = tok.decode(generate(m, mem, c.decoder.max_len - 1, preds,
                                                tok.vocab, head_ctx)[0].tolist())
                fnd, imp = split_sections(text)
                ctx = None if head_ctx is None else head_ctx[0].tolist()
                cases.append({"present": [p.label for p in preds[0] if p.present],
                              "context_head": ctx,
                              "context": None if drafted is None else drafted[0].tolist(),
                              "findings": fnd, "impression": imp,
                              "findings_head": split_sections(head_text)[0],
                              "impression_head": split_sections(head_text)[1]})
        runs[name] = {"seconds": round(time.perf_counter() - t0, 2), "cases": cases}
    mem, ful = runs["memory"]["cases"], runs["full"]["cases"]

    def agree(key: str) -> int:
        return sum(a[key] == b[key] for a, b in zip(mem, ful, strict=True))

    def agree_statements(key: str) -> int:
        return sum(statements(a[key]) == statements(b[key])
                   for a, b in zip(mem, ful, strict=True))

    dep = []
    for r, a, b in zip(recs, mem, ful, strict=True):
        codes = {i["code"] for i in r.meta.get("impression", [])} & set(EMR_DEPENDENT)
        if codes:
            dep.append([all(EMR_DEPENDENT[k] in x["impression"].lower() for k in codes)
                        for x in (a, b)])
    return {
        "cases": len(recs), "seed": seed, "image_pass": cfg.decoder.image_pass,
        "note_tokens": [len(s["emr_ids"]) for s in samples],
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "same_findings": agree("present"), "same_context": agree("context"),
        "same_findings_text": agree("findings"), "same_impression": agree("impression"),
        "same_findings_statements": agree_statements("findings"),
        "same_impression_statements": agree_statements("impression"),
        "same_context_head": agree("context_head"),
        "same_findings_text_head": agree("findings_head"),
        "same_impression_head": agree("impression_head"),
        "emr_dependent": len(dep),
        "emr_dependent_right": {"memory": sum(d[0] for d in dep),
                                "full": sum(d[1] for d in dep)},
        "differing": [{"case": i, "memory": a, "full": b}
                      for i, (a, b) in enumerate(zip(mem, ful, strict=True)) if a != b],
    }


def measure(n: int, checkpoint: str | None, seed: int = 7) -> dict[str, Any]:
    """Time of the CT measurements (``measure_findings``) and of the draft they join (same
    case, measured right after it), over ``n`` generated body test cases: for the cases that
    call a nodule or mass (its size measured), and, under ``all_cases``, for every case
    (since stop 32 every draft measures the fluid band around the heart,
    ``multimodal.pericardium``).  With ``heads.measure.island_labels`` (stop 44: a mass the
    head does not call looked for on the whole CT, ``multimodal.islands``) each case is also
    measured without it, right after: ``all_cases.without_islands_s_median`` and the median
    ratio of the two."""
    from medassist.model_data import record_sample, synth_records
    from multimodal.checkpoint import load_checkpoint
    from multimodal.heads import predict_findings
    from multimodal.measure import measure_findings
    from multimodal.training import predict

    if not (checkpoint and (Path(checkpoint) / "model.safetensors").is_file()):
        return {"skipped": "needs a trained checkpoint (thresholds and evidence boxes)"}
    model, cfg, _k, tok, _m = load_checkpoint(checkpoint)
    lesions = {les[0] for les in cfg.heads.measure.lesions}
    plain = dataclasses.replace(cfg.heads.measure, island_labels=()) \
        if cfg.heads.measure.island_labels else None
    rows: list[dict[str, Any]] = []
    everyone: list[dict[str, float]] = []
    for r in synth_records(str(ROOT / "configs/synth/small_fleischner_body.yaml"), cfg, seed,
                           n, "test"):
        sample = record_sample(r, cfg, tok, with_report=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            o = predict(model, [sample], batch_size=1)[0]
            preds = predict_findings(o, cfg.heads, cfg.ct)[0]
            gen: Any = model.generate  # a FusionModel method (nn.Module hides its type)
            gen(o, max_new=cfg.decoder.max_len - 1, findings=[preds])
        draft_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = measure_findings(preds, r.hu, cfg.ct.spacing_mm, cfg.heads.measure)
        everyone.append({"draft_s": draft_s, "measure_s": time.perf_counter() - t0})
        if plain is not None:
            t0 = time.perf_counter()
            measure_findings(preds, r.hu, cfg.ct.spacing_mm, plain)
            everyone[-1]["plain_s"] = time.perf_counter() - t0
        if not any(p.present and p.label in lesions for p in preds):
            continue
        rows.append({**everyone[-1], "measured": sum(p.size_source == "image" and p.label
                                                     in lesions for p in out)})
    ea = sorted(x["measure_s"] for x in everyone)
    er = sorted(x["measure_s"] / x["draft_s"] for x in everyone)
    all_cases = {"measure_s_median": round(ea[len(ea) // 2], 3),
                 "measure_s_max": round(ea[-1], 3),
                 "draft_s_median": round(sorted(x["draft_s"] for x in everyone)[
                     len(everyone) // 2], 3),
                 "measure_over_draft_median": round(er[len(er) // 2], 2)} if everyone else {}
    if plain is not None and everyone:
        pa = sorted(x["plain_s"] for x in everyone)
        pr = sorted(x["measure_s"] / x["plain_s"] for x in everyone)
        all_cases["without_islands_s_median"] = round(pa[len(pa) // 2], 3)
        all_cases["with_over_without_islands_median"] = round(pr[len(pr) // 2], 2)
    if not rows:
        return {"cases": n, "cases_with_a_called_lesion": 0, "all_cases": all_cases}
    ms = sorted(x["measure_s"] for x in rows)
    ratio = sorted(x["measure_s"] / x["draft_s"] for x in rows)
    return {"cases": n, "all_cases": all_cases, "cases_with_a_called_lesion": len(rows),
            "measured": sum(x["measured"] for x in rows),
            "measure_s_median": round(ms[len(ms) // 2], 3), "measure_s_max": round(ms[-1], 3),
            "draft_s_median": round(sorted(x["draft_s"] for x in rows)[len(rows) // 2], 3),
            "measure_over_draft_median": round(ratio[len(ratio) // 2], 2),
            "measure_over_draft_max": round(ratio[-1], 2)}


def throughput(cfg: Any, steps: int, cuda: bool) -> dict[str, Any]:
    """AdamW steps on the demo config (600-token EMR, 160-token report), cases/s.  CPU fp32
    at batch 8 is the baseline; with ``cuda`` (and a GPU) the same steps run on the GPU in
    fp32 and under bf16 autocast (as ``medassist train --device cuda``) at batch 8 and 64,
    in the same process, and each is given as a ratio to the CPU baseline."""
    from multimodal.losses import Targets, compute_losses
    from multimodal.model import FusionModel
    from multimodal.training import to_device

    f = len(cfg.heads.labels)

    def run(device: str, b: int, bf16: bool) -> dict[str, Any]:
        dev = torch.device(device)
        torch.manual_seed(0)
        model = FusionModel(cfg).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = to_device(dataclasses.replace(_input(cfg, 600, b),
                                          report_ids=torch.randint(5, 500, (b, 160))), dev)
        tg = to_device(Targets(present=torch.zeros(b, f), laterality=torch.full((b, f), -100),
                               location=torch.full((b, f), -100),
                               size_mm=torch.full((b, f), float("nan")),
                               report_targets=torch.randint(5, 500, (b, 160))), dev)

        def step() -> None:
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = compute_losses(model(x), tg, cfg)["total"]
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        dt = _time(step, steps if dev.type == "cpu" else 20)  # GPU steps are short
        return {"device": dev.type, "dtype": "bf16 autocast" if bf16 else "fp32", "batch": b,
                "step_s": round(dt, 4), "cases_per_s": round(b / dt, 2)}

    base = run("cpu", 8, False)
    res: dict[str, Any] = {"emr_tokens": 600, "report_tokens": 160, "steps": steps,
                           "cpu_threads": torch.get_num_threads(), "cpu": base}
    if not cuda:
        return res
    if not torch.cuda.is_available():
        res["cuda"] = "not available"
        return res
    res["cuda_device"] = torch.cuda.get_device_name(0)
    res["cuda"] = []
    for b in (8, 64):
        for bf16 in (False, True):
            r = run("cuda", b, bf16)
            r["x_cpu"] = round(r["cases_per_s"] / base["cases_per_s"], 1)
            res["cuda"].append(r)
    res["cuda_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "models/demo"))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 4K-token EMR")
    ap.add_argument("--child", choices=("memory", "full"))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--cuda", action="store_true",
                    help="train_throughput also on the GPU (fp32 and bf16 autocast)")
    ap.add_argument("--long-cases", type=int, default=20, help="long-note cases (0: skip)")
    ap.add_argument("--measure-cases", type=int, default=60,
                    help="generated body cases for the size-measurement timing (0: skip)")
    ap.add_argument("--image-pass", choices=("on", "off"), default=None,
                    help="long_cases: the text from a pass without the note "
                         "(decoder.image_pass; default: the checkpoint's)")
    ap.add_argument("--only", choices=("latency", "kv_cache", "long_emr", "long_cases",
                                       "train_throughput", "measure"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(long_emr_child(args.child, args.tokens, args.checkpoint)))
        return
    torch.set_num_threads(2)
    model, cfg = _model(args.checkpoint)
    reps = 1 if args.quick else 3
    parts: dict[str, Callable[[], Any]] = {
        "latency": lambda: latency(model, cfg, reps, _vocab(args.checkpoint)),
        "kv_cache": lambda: kv_cache(model, cfg, reps),
        "long_emr": lambda: long_emr(4096 if args.quick else args.tokens, args.checkpoint),
        "long_cases": lambda: long_cases(args.long_cases, args.checkpoint,
                                         4096 if args.quick else args.tokens,
                                         image_pass=None if args.image_pass is None
                                         else args.image_pass == "on")
        if args.long_cases > 0 else {"skipped": "--long-cases 0"},
        "train_throughput": lambda: throughput(cfg, 2 if args.quick else 4, args.cuda),
        "measure": lambda: measure(args.measure_cases, args.checkpoint)
        if args.measure_cases > 0 else {"skipped": "--measure-cases 0"},
    }
    res: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "checkpoint": args.checkpoint if (Path(args.checkpoint) / "model.safetensors")
        .is_file() else "random init (configs/model/demo.yaml)"}
    for name, fn in parts.items():
        if args.only in (None, name):
            res[name] = fn()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
