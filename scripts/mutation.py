#!/usr/bin/env python
"""Mutation testing of the search core with mutmut: one module at a time, with its fast tests.

    pip install -e '.[dev]'
    python scripts/mutation.py [MODULE ...] [--jobs N] [--work DIR] [--source DIR] [--json FILE]
                               [--survivors] [--only FUNCTION ...] [--score-only]

MODULE is one of gumbel, supernet, search, schedules, genotype, budget, cost, shortlist, selection
(default: all of them, one after the other). For each, the source tree (tracked and untracked, not ignored, files of ``--source``,
default this repository) is copied to WORK/MODULE (default ``.mutation/``, ignored by git), and
mutmut mutates the module's listed functions there; each mutant runs the module's fast tests
that call the mutated function (mutmut records which tests call which function first). ``--jobs``
mutants run at once (default 1: the machine is shared). ``--survivors`` runs again only the
mutants that no test killed in the last run in WORK (after adding tests), and every mutant of
a function whose code changed since.

``--only FUNCTION ...`` mutates only some of one module's functions (mutmut's names, globs).

The score of a module is killed / (mutants run - equivalent): a mutant is killed when a test fails
(or times out, or crashes); an equivalent mutant computes what the original computes, so no test
can kill it; a mutant not run (an interrupted or restricted run) is counted apart, as "not run".
``scripts/mutation_equivalent.yaml`` lists the equivalent ones, each with the mutated line (so a
renumbered mutant is noticed) and why it is equivalent. Prints one table row per module, and the
surviving mutants that are not listed as equivalent (``mutmut show NAME`` in WORK/MODULE shows
one); ``--json`` also writes the counts. Exit 0 when the run finished (whatever the score), 1 if
mutmut failed, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.yaml")


@dataclass(frozen=True)
class Target:
    """A module, the functions of it to mutate (mutmut's mangled names, globs) and its tests."""

    path: str
    functions: tuple[str, ...]
    tests: tuple[str, ...]


# The tests of each module are its fast unit tests: whole searches through the CLI are left
# out, since every mutant of a function they call would run them.
TARGETS = {
    "gumbel": Target("nas/gumbel.py", ("x_*", "xǁ*"), (
        "tests/test_gumbel.py", "tests/test_edge_topk.py::test_relaxed_topk_is_successive_softmaxes_by_hand",
        "tests/test_edge_topk.py::test_gumbel_topk_st_is_an_exact_k_hot_of_the_perturbed_top_k",
        "tests/test_edge_topk.py::test_the_k_subsets_follow_plackett_luce_without_replacement",
        "tests/test_edge_topk.py::test_gumbel_topk_st_passes_dim_through",
        "tests/test_estimators.py::test_conditional_gumbel_has_the_right_argmax_and_marginals",
        "tests/test_estimators.py::test_conditional_gumbel_keeps_masked_entries_out_and_works_per_row",
        "tests/test_estimators.py::test_gumbel_rao_is_straight_through_rao_blackwellised",
        "tests/test_estimators.py::test_reinmax_gradient_is_the_papers_formula",
        "tests/test_toy_estimators.py")),
    # the sampling and gradient code: the hard weights' gradients, the mixed edge, the cell's
    # single-path forward, the samples and their log-probabilities (not construction checks,
    # names, state or derivation, which is genotype's)
    "supernet": Target("nas/supernet.py", (
        "x__dot", "xǁ_SampledNodeǁ*", "x_sampled_node", "x_sampled_op", "xǁArchSampleǁ*",
        "xǁMixedEdgeǁforward", "xǁSearchCellǁforward", "x_canonical_order",
        "xǁSupernetǁedge_layout", "xǁSupernetǁnode_logits", "xǁSupernetǁ_edge_sample",
        "xǁSupernetǁedge_probabilities", "xǁSupernetǁarch_parameters",
        "xǁSupernetǁweight_parameters", "xǁSupernetǁ_generator", "xǁSupernetǁop_order",
        "xǁSupernetǁsample", "xǁSupernetǁ_draw", "xǁSupernetǁlog_prob", "xǁSupernetǁprobabilities",
        "xǁSupernetǁentropy"), (
        "tests/test_supernet.py", "tests/test_edge_topk.py", "tests/test_toy_estimators.py",
        "tests/test_estimators.py::test_supernet_estimators_run_the_gdas_sample_and_reach_every_logit",
        "tests/test_estimators.py::test_decoupled_temperatures_hand_computed",
        "tests/test_estimators.py::test_the_forward_temperature_sets_the_sampled_distribution",
        "tests/test_search_quality.py::test_weight_steps_sample_from_fixed_logits_not_the_architecture",
        "tests/test_search_quality.py::test_reinforce_runs_forward_only_samples_times_and_returns_the_mean_loss",
        "tests/test_reorder.py")),
    "steps": Target("nas/steps.py", ("x_weight_step", "x_arch_step", "x_reinforce_step"), (
        "tests/test_search_quality.py", "tests/test_toy_estimators.py", "tests/test_steps.py")),
    "search": Target("nas/search.py", ("x_edge_parameters", "x_weight_sampling_logits"), (
        "tests/test_search_quality.py",)),
    "schedules": Target("nas/schedules.py", ("x_*", "xǁ*"), ("tests/test_schedules.py",)),
    "genotype": Target("nas/genotype.py", ("x_edge_inputs", "x_num_nodes", "x_derive_cell"), (
        "tests/test_genotype.py", "tests/test_supernet.py", "tests/test_edge_topk.py")),
    # the budgeted derivation and its constraint (issue 35)
    "budget": Target("nas/budget.py", ("x_*", "xǁ*"), (
        "tests/test_shortlist.py",
        "tests/test_budget.py::test_nb201_derivation_is_the_most_probable_cell_within_budget",
        "tests/test_budget.py::test_darts_derivation_keeps_two_inputs_and_is_optimal",
        "tests/test_budget.py::test_expected_cost_is_the_table_mean_and_its_gradient_is_exact",
        "tests/test_budget.py::test_multipliers_rise_over_budget_and_fall_back_to_zero",
        "tests/test_budget.py::test_a_budget_below_the_smallest_network_fails_before_the_run",
        "tests/test_budget.py::test_check_feasible_accepts_the_smallest_network_and_names_it_below",
        "tests/test_budget.py::test_check_feasible_refuses_bounds_that_only_fit_one_at_a_time",
        "tests/test_budget.py::test_describe_names_each_cost_and_its_share_of_its_bound",
        "tests/test_budget.py::test_two_bounds_keep_a_multiplier_each_and_round_trip_by_name",
        "tests/test_budget.py::test_the_k_best_are_exact_at_the_bound_when_every_op_costs_something",
        "tests/test_budget.py::test_without_a_table_the_choices_carry_no_cost_and_darts_never_takes_none",
        # a chain's derivation (nas.budget._layer_groups)
        "tests/test_chain.py::test_cost_table_is_exact_and_budgeted_derivation_is_the_best_that_fits",
        "tests/test_chain.py::test_a_latency_table_of_a_chain_prices_every_layer_and_the_derivation_keeps_it")),
    # the cost table: counting, probing, the per-op entries and their sums (not the timing loop,
    # whose mutants change only how long it measures)
    "cost": Target("nas/cost.py", (
        "x_format_cost", "x_count_flops", "x_count_macs", "x_count_cost", "xǁCostTableǁ*",
        "x_probe_genotypes", "x__cells_of", "x__sites", "x__chain_sites", "x__probe",
        "x_build_cost_table", "x__probe_costs", "x__calibrate", "x__whole_macs", "x__params",
        "x__measured"), tuple(f"tests/test_budget.py::{t}" for t in (
            "test_multiply_adds_of_a_conv_by_hand", "test_nb201_conv3x3_edge_costs_what_its_convs_do",
            "test_the_table_adds_up_to_the_counted_network_for_random_cells",
            "test_darts_table_matches_published_darts_v2_count",
            "test_nb201_derivation_is_the_most_probable_cell_within_budget",
            "test_darts_derivation_keeps_two_inputs_and_is_optimal",
            "test_expected_cost_is_the_table_mean_and_its_gradient_is_exact",
            "test_the_latency_fit_never_prices_a_network_below_zero",
            "test_multiply_adds_that_do_not_add_up_fail_in_one_line",
            "test_check_feasible_accepts_the_smallest_network_and_names_it_below",
            "test_describe_names_each_cost_and_its_share_of_its_bound")) + (
        "tests/test_chain.py::test_cost_table_is_exact_and_budgeted_derivation_is_the_best_that_fits",
        "tests/test_chain.py::test_a_latency_table_of_a_chain_prices_every_layer_and_the_derivation_keeps_it",
        "tests/test_latency.py::test_torch_table_predicts_its_random_networks",
        "tests/test_cost.py")),
    "shortlist": Target("nas/shortlist.py", ("x_*", "xǁ*"), ("tests/test_shortlist.py",)),
    # the selection's logic (its trainings and phase run only in whole searches)
    "selection": Target("nas/selection.py", (
        "x_rounds", "x_ranked", "x_settings", "x_read_record", "x_write_record", "x_processes",
        "x_torch_threads", "x_plural"), tuple(f"tests/test_selection.py::{t}" for t in (
            "test_rounds_halve_the_candidates_and_multiply_the_epochs",
            "test_ranking_breaks_ties_by_the_shortlist_order", "test_a_record_is_read_back_as_written",
            "test_a_damaged_record_is_refused_in_one_line", "test_a_record_that_is_not_json_is_refused",
            "test_processes_share_the_runs_threads", "test_settings_hold_what_a_training_depends_on",
            "test_torch_threads_restores_the_count"))),
}
DETECTED = {"killed", "timeout", "segfault"}  # a test failed, hung or the process crashed


def fail(message: str) -> int:
    print(f"mutation: error: {message}", file=sys.stderr)
    return 2


def source_files(source: Path) -> list[str]:
    """The files of ``source`` that git tracks or would track (untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (source / f).is_file()]


def prepare(source: Path, work: Path, target: Target) -> None:
    """Copy the tree to ``work`` (keeping mutmut's earlier results) and configure mutmut there."""
    work.mkdir(parents=True, exist_ok=True)
    for name in source_files(source):
        dest = work / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, dest)
    (work / f"{ORDER_PLUGIN}.py").write_text(ORDER_PLUGIN_CODE)
    tests = "".join(f"\n    {t}" for t in present_tests(work, target))
    config = (work / "setup.cfg").read_text().split("\n[mutmut]")[0].rstrip("\n")
    # the suite's xdist workers (its addopts) would hide from mutmut which test calls what
    config = re.sub(r"(?m)^(addopts = .*?) -n \d+ --dist \w+", r"\1", config)
    (work / "setup.cfg").write_text(config + "\n".join([
        "", "", "[mutmut]", "source_paths =", "    nas", "    search_spaces",
        "also_copy =", "    configs", "    scripts", f"    {ORDER_PLUGIN}.py",
        f"pytest_add_cli_args = -p {ORDER_PLUGIN}",
        f"only_mutate = {target.path}", f"pytest_add_cli_args_test_selection ={tests}",
        "# torch is not fork-safe once it has run: every mutant forks from a clean server",
        "process_isolation = forkserver", ""]))


ORDER_PLUGIN = "mutation_fastest_first"
ORDER_PLUGIN_CODE = '''"""pytest plugin of scripts/mutation.py: the fastest tests first, so that a mutant dies early."""
import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):
    stats = Path("mutmut-stats.json")  # mutmut's record of each test's duration
    if stats.is_file():
        durations = json.loads(stats.read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
'''


def present_tests(work: Path, target: Target) -> list[str]:
    """The module's tests that exist in ``work`` (an older tree may lack the newer ones)."""
    out = []
    for test in target.tests:
        file, _, function = test.partition("::")
        if (work / file).is_file() and (not function or f"def {function}(" in (work / file).read_text()):
            out.append(test)
    return out


def mutant_globs(name: str, target: Target) -> list[str]:
    module = target.path[:-3].replace("/", ".")
    return [f"{module}.{f}__mutmut_*" for f in target.functions]


def function_sources(path: Path) -> dict[str, str]:
    """Each function's source in ``path`` by mutmut's mangled name (``x_f``, ``xǁClassǁf``)."""
    if not path.is_file():
        return {}
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[f"x_{node.name}"] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"xǁ{node.name}ǁ{item.name}"] = ast.dump(item)
    return out


def undetected(work: Path, target: Target, globs: list[str], source: Path) -> list[str]:
    """The mutants to run again: those of the last run in ``work`` that no test detected (or
    that never ran), and every mutant of a function whose code differs in ``source``; all of
    them when there was no run."""
    meta = work / "mutants" / (target.path + ".meta")
    if not meta.is_file():
        return globs
    from mutmut.stats import status_by_exit_code
    module = target.path[:-3].replace("/", ".")
    old, new = function_sources(work / target.path), function_sources(source / target.path)
    changed = [f"{module}.{f}__mutmut_*" for f in new if old.get(f) != new[f]
               and any(fnmatch.fnmatch(f"{module}.{f}__mutmut_1", g) for g in globs)]
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return changed + [k for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in globs)
                      and not any(fnmatch.fnmatch(k, c) for c in changed)
                      and status_by_exit_code[v] not in DETECTED]


def load_equivalent() -> dict[str, dict[str, str]]:
    import yaml
    if not EQUIVALENT.is_file():
        return {}
    return yaml.safe_load(EQUIVALENT.read_text()) or {}


def mutated_lines(work: Path, mutant: str) -> list[str]:
    """The lines the mutant adds (stripped), from ``mutmut show``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work,
                         capture_output=True, text=True).stdout
    return [l[1:].strip() for l in out.splitlines() if l.startswith("+") and not l.startswith("+++")]


def score(name: str, target: Target, work: Path, equivalent: dict[str, dict[str, str]]) -> dict:
    """Count the module's mutants by status; check the equivalent ones against their lines."""
    from mutmut.stats import status_by_exit_code
    meta = json.loads((work / "mutants" / (target.path + ".meta")).read_text())
    globs = mutant_globs(name, target)
    statuses = {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()
                if any(fnmatch.fnmatch(k, g) for g in globs)}
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    equivalent_here, stale, survivors = [], [], []
    for mutant, status in sorted(statuses.items()):
        if status in DETECTED or status == "not checked":  # not checked: not run (yet)
            continue
        entry = equivalent.get(mutant)
        if entry is not None and status == "survived":
            if entry.get("line", "").strip() in mutated_lines(work, mutant):
                equivalent_here.append(mutant)
                continue
            stale.append(mutant)
        survivors.append(mutant)
    listed = [m for m in equivalent if m.startswith(target.path[:-3].replace("/", ".") + ".")]
    missing = [m for m in listed if m not in statuses or statuses[m] in DETECTED]
    killed = sum(counts.get(s, 0) for s in DETECTED)
    total = len(statuses)
    not_run = counts.get("not checked", 0)
    scored = total - not_run - len(equivalent_here)
    return {"module": name, "mutants": total, "not_run": not_run, "killed": killed,
            "equivalent": len(equivalent_here),
            "survived": len(survivors), "score": killed / scored if scored else 1.0,
            "counts": counts, "survivors": survivors, "stale_equivalent": stale,
            "listed_but_not_surviving": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(TARGETS))
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--work", type=Path, default=REPO / ".mutation",
                        help="where the mutated copies live (default .mutation/)")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the tree to mutate (default: this repository's working tree)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--score-only", action="store_true",
                        help="run nothing: score the last run in WORK/MODULE again (after "
                             "editing the list of equivalent mutants)")
    parser.add_argument("--only", nargs="+", metavar="FUNCTION",
                        help="mutate only these of the module's functions (mutmut's names, globs: "
                             "x_f, xǁClassǁf); one module")
    parser.add_argument("--survivors", action="store_true",
                        help="run again only the mutants of WORK/MODULE's last run that no test "
                             "killed (after adding tests), and those of changed functions")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        return fail(f"unknown module '{unknown[0]}' (known: {', '.join(TARGETS)})")
    if args.only and len(args.modules) != 1:
        return fail("--only needs exactly one MODULE")
    if args.jobs < 1:
        return fail(f"--jobs must be at least 1, got {args.jobs}")
    if not (args.source / "nas").is_dir():
        return fail(f"--source {args.source} holds no nas/ package")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        return fail("mutmut is not installed: pip install -e '.[dev]'")
    equivalent = load_equivalent()
    results = []
    for name in args.modules or list(TARGETS):
        target, work = TARGETS[name], args.work.resolve() / name
        if args.only:
            outside = [f for f in args.only if not any(fnmatch.fnmatch(f, g) for g in target.functions)]
            if outside:
                return fail(f"--only {outside[0]} is not one of {name}'s functions "
                            f"({', '.join(target.functions)})")
            target = Target(target.path, tuple(args.only), target.tests)
        if args.score_only:
            if not (work / "mutants" / (target.path + ".meta")).is_file():
                return fail(f"--score-only: no mutation run of {name} in {work}")
            results.append(score(name, target, work, equivalent))
            continue
        again = undetected(work, target, mutant_globs(name, target), args.source.resolve())
        prepare(args.source.resolve(), work, target)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutants/ comes first
        log = work / "mutmut.log"
        print(f"{name}: mutating {target.path} in {work} (log: {log})", flush=True)
        names = mutant_globs(name, target)
        if args.survivors:  # a changed function's mutants are new: they all run
            names = [m for m in again if m not in equivalent]  # listed: checked when scored
            print(f"{name}: {len(names)} mutants to run again", flush=True)
        code = 0
        if names:
            with log.open("w") as out:
                code = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                                       str(args.jobs), *names],
                                      cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            print(f"mutation: mutmut failed on {name} (exit {code}); see {log}", file=sys.stderr)
            return 1
        results.append(score(name, target, work, equivalent))
        r = results[-1]
        print(f"{name}: {r['killed']} of {r['mutants'] - r['not_run'] - r['equivalent']} "
              f"non-equivalent mutants killed ({100 * r['score']:.1f}%), {r['equivalent']} "
              f"equivalent, {r['not_run']} not run", flush=True)
    print("\n| module | mutants | not run | equivalent | killed | survived | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {TARGETS[r['module']].path} | {r['mutants']} | {r['not_run']} | {r['equivalent']} | "
              f"{r['killed']} | {r['survived']} | {100 * r['score']:.1f}% |")
    for r in results:
        if r["survivors"]:
            print(f"\nsurviving in {r['module']}: " + " ".join(r["survivors"]))
        if r["stale_equivalent"]:
            print(f"listed as equivalent, but the mutated line changed ({r['module']}): "
                  + " ".join(r["stale_equivalent"]))
        if r["listed_but_not_surviving"]:
            print(f"listed as equivalent, but not a surviving mutant now ({r['module']}): "
                  + " ".join(r["listed_but_not_surviving"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
