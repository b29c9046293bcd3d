"""Reports as text for people at a terminal."""

from __future__ import annotations

from typing import Any


def report_text(report: dict[str, Any]) -> str:
    met = report.get("deadline_met")
    lines = [
        f"Request {report['request_id']}  ({report['request_type']}, subject {report['subject_ref']})",
        f"  status      {report['status']}",
        f"  received    {report['received_at']}",
        f"  deadline    {report['deadline']}" + ("" if met is None else ("  (met)" if met else "  (MISSED)")),
        f"  completed   {report.get('completed_at') or '-'}",
    ]
    if report.get("trace_id"):
        lines.append(f"  trace       {report['trace_id']}")
    if report.get("rounds", 1) > 1:
        lines.append(
            f"  search      {report['rounds']} rounds (identifiers learnt from the subject's records)"
        )
    for system in report["systems"]:
        verification = system.get("verification") or {}
        verdict = "verified" if verification.get("passed") else "NOT verified"
        lines.append(
            f"  [{system['system']}] {system['state']}: found {system['records_found']}, "
            f"erased {system['erased']}, anonymised {system['anonymised']}, "
            f"restricted {system['restricted']}, retained {system['retained']}"
            + (f" - {verdict}" if verification else "")
        )
        if system.get("error"):
            lines.append(f"      error: {system['error']}")
        if system.get("next_erasure_on"):
            lines.append(f"      next scheduled erasure: {system['next_erasure_on']}")
        for later in system.get("deferred", []):
            lines.append(
                f"      later: {later['erased']} erased on {later['finished_at']}"
                + (f" because {later['reason']}" if later.get("reason") else "")
                + f" ({later['still_retained']} still retained)"
            )
        for c in system["categories"]:
            lines.append(f"      {c['category']:<22} {_category_summary(c)}")
            for kept in c.get("retained", []):
                why = kept.get("hold_reference") or kept.get("rule_id") or "-"
                until = kept.get("retain_until") or "while the hold lasts"
                lines.append(
                    f"        kept {kept['count']} under {why}: {kept['legal_basis']} (until {until})"
                )
            for referred in c.get("redirected", []):
                lines.append(
                    f"        referred {referred['count']} to the controller {referred['controller']}"
                )
            for how in c.get("found_by", []):
                lines.append(
                    f"        {how['count']} found by {how['kind']} ({how['source']}, round {how['round']})"
                )
            if c.get("note"):
                lines.append(f"        note: {c['note']}")
    for review in report.get("reviews", []):
        records = ", ".join(f"{n} {c}" for c, n in review["records"].items()) or "-"
        decided = f" by {review['decided_role']} {review['decided_by']}" if review.get("decided_by") else ""
        where = review["system"] or "request"
        lines.append(f"  [review] {where}: {records} ({review['reason']}): {review['state']}{decided}")
    return "\n".join(lines)


def _category_summary(c: dict[str, Any]) -> str:
    if c["found"] == 0 and not c.get("in_review"):
        return "not found"
    parts = [f"{c[k]} {k}" for k in ("erased", "anonymised", "restricted", "unrestricted") if c.get(k)]
    if c.get("in_review"):
        parts.append(f"{c['in_review']} awaiting review")
    kept = sum(r["count"] for r in c.get("retained", []))
    if kept:
        parts.append(f"{kept} retained")
    referred = sum(r["count"] for r in c.get("redirected", []))
    if referred:
        parts.append(f"{referred} redirected")

    return f"{c['found']} found: " + ", ".join(parts)
