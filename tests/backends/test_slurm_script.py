"""The SLURM job script and option checks: no daemons needed.

Job scripts are compared with golden files in ``tests/backends/golden``. When a change
to a script is intended, regenerate them with

    UPDATE_GOLDEN=1 pytest tests/backends/test_slurm_script.py

and review the difference (``git diff tests/backends/golden``) before committing.
"""

from __future__ import annotations

import json
import shlex
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallelaverage import parallel, parallel_average
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.errors import OptionError, OptionTypeError
from parallelaverage.backends.base import worker_argv
from parallelaverage.backends.slurm import SlurmBackend
from parallelaverage.backends.slurm_script import (
    DEFAULT_TEMPLATE, PLACEHOLDERS, ScriptInputs, load_template, render_script, template_path,
)
from parallelaverage.backends.slurm_options import (
    BACKEND_OPTIONS, OURS, OURS_SHORT, SBATCH_OPTIONS, SHORT_OPTIONS, check_slurm_options,
)

GOLDEN = Path(__file__).parent / "golden"
JOB_DIR = Path("/cluster/home/alice/project/.parallelaverage/1_my_function")
SEED_OPTIONS = {"time": "00:02:00", "mem": "1G"}


def inputs(options=None, *, launch_no=1, n_tasks=5, job_dir=JOB_DIR, **overrides) -> ScriptInputs:
    """Script inputs with fixed paths, as if submitted by alice from her project."""
    return ScriptInputs(
        job_dir=job_dir, launch_no=launch_no, n_tasks=n_tasks,
        options=SEED_OPTIONS if options is None else options,
        chdir="/cluster/home/alice/project", python="/cluster/home/alice/venv/bin/python",
        pythonpath="/cluster/home/alice/project:/cluster/home/alice/lib", **overrides,
    )


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    how = ("If the change is intended, regenerate the golden files with "
           "'UPDATE_GOLDEN=1 pytest tests/backends/test_slurm_script.py' and review 'git diff tests/backends/golden'.")
    assert path.exists(), f"no golden file {path}. {how}"
    expected = path.read_text()
    assert text == expected, f"the generated job script differs from {path}. {how}\n--- generated:\n{text}"


# ----------------------------------------------------------------- golden scripts
def test_the_seed_example_script():
    assert_golden("seed.sbatch", render_script(inputs()))


def test_options_flags_short_names_quoting_and_setup():
    options = {
        "time": "1-00:00:00", "partition": "gpu", "A": "proj42", "N": 2, "ntasks_per_node": 4,
        "c": 2, "exclusive": True, "overcommit": False, "gres": "gpu:a100:2",
        "mail_user": 'Alice "Al" <alice@example.org> #1', "signal": "USR1@300", "mpi": "pmix",
        "setup": ["module purge", "module load openmpi/4.1 # site MPI", 'source "$HOME/venv/bin/activate"'],
    }
    script = render_script(inputs(options, launch_no=3, n_tasks=8,
                                  job_dir=Path("/scratch/alice/my data/.parallelaverage/12_simulate")))
    assert_golden("options.sbatch", script)
    assert "USR1@60" not in script  # the user's signal replaces the default
    assert "--overcommit" not in script  # False leaves the option out


def test_the_mpiexec_launcher_script():
    options = {"launcher": "mpiexec", "time": "10", "setup": "module load openmpi"}
    script = render_script(inputs(options, n_tasks=4, mpiexec="/cluster/home/alice/venv/bin/mpiexec",
                                  mpiexec_env={"OMPI_MCA_btl": "^ofi"}, mpiexec_args=("--bind-to", "none"),
                                  relays_signal=True))  # Open MPI's
    assert_golden("mpiexec.sbatch", script)


def bash_syntax_error(script: str) -> str:
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    return done.stderr


@pytest.mark.parametrize("signal, sbatch_line, relayed", [
    (None, "#SBATCH --signal=B:USR1@60", "USR1"),
    ("USR1@300", "#SBATCH --signal=B:USR1@300", "USR1"),
    ("R:USR2@120", "#SBATCH --signal=RB:USR2@120", "USR2"),
    ("USR1", "#SBATCH --signal=B:USR1", "USR1"),
    (False, None, None),
])
def test_open_mpi_s_mpiexec_gets_the_warning_from_the_batch_shell(signal, sbatch_line, relayed):
    """Open MPI's daemons die of a signal sent to them (tests/slurm shows it): the script
    asks for the B: form and relays the signal to mpiexec, which passes it on to the
    ranks; $? after the launch is still mpiexec's exit status."""
    options = {"launcher": "mpiexec", "time": "10"} | ({} if signal is None else {"signal": signal})
    script = render_script(inputs(options, relays_signal=True))
    assert bash_syntax_error(script) == ""
    lines = script.splitlines()
    assert [line for line in lines if line.startswith("#SBATCH --signal")] == ([sbatch_line] if sbatch_line else [])
    traps = [line for line in lines if line.startswith("trap ")]
    if relayed is None:  # no warning: nothing to relay, mpiexec in the foreground
        assert traps == [] and not any(line.endswith(" &") for line in lines)
        return
    assert traps == [f"trap '[ -z \"$parallelaverage_launcher\" ] || kill -s {relayed} "
                     f"\"$parallelaverage_launcher\" 2>/dev/null' {relayed}"]
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert lines[first_command + 1] == traps[0]  # before anything that could take time
    launch = next(i for i, line in enumerate(lines) if line.endswith(" &"))
    assert lines[launch].startswith("sh -c 'trap \"\" USR1; exec \"$@\"' sh mpiexec -n ")
    assert lines[launch + 4] == "code=$?"


def test_mpich_s_mpiexec_and_srun_keep_slurm_s_own_delivery():
    """MPICH's proxies catch the signal and do nothing, and srun's ranks are the step."""
    for options in ({"launcher": "mpiexec", "time": "10"}, {"time": "10"}):
        script = render_script(inputs(options))
        assert "#SBATCH --signal=USR1@60\n" in script and "trap '" not in script and " &\n" not in script


def test_the_relay_comes_before_the_first_command_of_a_user_template():
    template = ("#!/bin/bash -l\n{{sbatch_options}}\n#SBATCH --constraint=haswell\n\n# mine\n"
                "module load openmpi\n{{launch}}\necho $? > {{exit_code_file}}\n")
    script = render_script(inputs({"launcher": "mpiexec", "time": "10"}, relays_signal=True), template)
    assert bash_syntax_error(script) == ""
    before, _, after = script.partition("# mine\n")
    assert "#SBATCH --constraint=haswell" in before and after.startswith("# SLURM's time-limit warning")
    assert after.index("trap '") < after.index("module load openmpi")


def test_a_user_template_replaces_the_built_in_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_CONFIG_DIR", str(tmp_path))
    assert load_template() == (DEFAULT_TEMPLATE, None)
    template = tmp_path / "slurm.sbatch"
    template.write_text(
        "#!/bin/bash -l\n"
        "{{sbatch_options}}\n"
        "#SBATCH --constraint=haswell\n"
        "{{ setup }}\n"
        "module load cray-python\n"
        "{{environment}}\n"
        "echo \"job {{job_name}} launch {{attempt}} on {{n_tasks}} ranks in {{job_dir}}\"\n"
        "srun --mpi=cray_shasta {{worker}}\n"
        "echo $? > {{exit_code_file}}\n"
    )
    assert template_path() == template
    text, source = load_template()
    assert source == template
    assert_golden("user_template.sbatch", render_script(inputs(), text, source))


def test_template_path_defaults_to_the_user_config_dir(monkeypatch):
    monkeypatch.delenv("PARALLELAVERAGE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", "/home/alice")
    assert template_path() == Path("/home/alice/.config/parallelaverage/slurm.sbatch")


def test_a_template_with_unknown_or_missing_placeholders_is_refused(tmp_path):
    source = tmp_path / "slurm.sbatch"
    with pytest.raises(ValueError, match=r"slurm\.sbatch: unknown placeholder\(s\) \{\{sbatch_opts\}\}; the placeholders are \{\{sbatch_options\}\}"):
        render_script(inputs(), "#!/bin/bash\n{{sbatch_opts}}\n{{launch}}\n", source)
    with pytest.raises(ValueError, match=r"must contain \{\{sbatch_options\}\}"):
        render_script(inputs(), "#!/bin/bash\n{{launch}}\n", source)


def test_every_placeholder_is_documented_and_used_by_the_built_in_template():
    used = {name for name in PLACEHOLDERS if "{{" + name + "}}" in DEFAULT_TEMPLATE}
    assert used == {"sbatch_options", "setup", "environment", "exit_code_file", "lives", "launch", "relaunch",
                    "job_name", "attempt", "n_tasks"}


# ----------------------------------------------------------------- option names
def slurm(**options):
    return parallel(N_runs=4, N_tasks=2, queuing_system="slurm", **options)


@pytest.mark.parametrize("name, closest", [
    ("tme", "time"), ("memory", "mem"), ("partiton", "partition"), ("cpus_per_tasks", "cpus_per_task"),
    ("T", "t"), ("mem_per_cpus", "mem_per_cpu"), ("launch", "launcher"),
])
def test_an_unknown_option_fails_at_decoration_time_naming_the_closest(name, closest):
    with pytest.raises(ValueError, match=rf"^{name}=\.\.\.: not an sbatch option parallelaverage knows; "
                                         rf"did you mean (\w+ or )*{closest}\b"):
        slurm(**{name: "1"})


def test_an_unknown_option_with_nothing_close_still_says_how_options_are_spelled():
    with pytest.raises(ValueError, match=r"zzzzzz=\.\.\.: not an sbatch option parallelaverage knows \(sbatch "
                                         r"options are spelled with _ for -"):
        parallel_average(N_runs=4, N_tasks=2, queuing_system="slurm", zzzzzz=1)


@pytest.mark.parametrize("name, flag", [
    ("ntasks", "--ntasks"), ("n", "--ntasks"), ("job_name", "--job-name"), ("J", "--job-name"),
    ("output", "--output"), ("o", "--output"), ("error", "--error"), ("e", "--error"),
    ("chdir", "--chdir"), ("D", "--chdir"), ("requeue", "--requeue"), ("open_mode", "--open-mode"),
])
def test_options_we_set_ourselves_are_refused(name, flag):
    with pytest.raises(ValueError, match=rf"^{name}=\.\.\.: parallelaverage sets {flag} itself \(.+\); remove it"):
        slurm(**{name: "x"})


@pytest.mark.parametrize("name, reason", [
    ("array", "a call is one job: use N_runs"), ("a", "a call is one job"),
    ("wrap", "parallelaverage writes the job script"), ("wait", r"parallelaverage\.wait\(f\)"),
    ("clusters", "submit from the target cluster"),
    ("no_requeue", "parallelaverage requeues launches itself and resumes them where they stopped; .* "
                   "pass max_relaunches=0"),
])
def test_options_that_make_no_sense_for_one_job_are_refused(name, reason):
    with pytest.raises(ValueError, match=rf"^{name}=\.\.\.: not supported: .*{reason}"):
        slurm(**{name: "1"})


def test_the_same_option_twice_is_refused():
    with pytest.raises(ValueError, match=r"t=\.\.\. and time=\.\.\. are the same sbatch option \(--time\); pass only one"):
        slurm(t="10", time="00:10:00")


@pytest.mark.parametrize("options, error, message", [
    (dict(launcher="mpirun"), ValueError, "launcher='mpirun': must be one of 'srun', 'mpiexec'"),
    (dict(mpi="pmi2 --x"), ValueError, "mpi='pmi2 --x': must be the name of an srun MPI plugin"),
    (dict(mpi="pmix", launcher="mpiexec"), ValueError, "needs launcher='srun'"),
    (dict(setup=["module load x", 3]), TypeError, "setup=.*must be a shell line or a list of shell lines"),
    (dict(time=None), TypeError, "time=None"),
    (dict(mem={"G": 1}), TypeError, "mem="),
])
def test_bad_backend_option_values(options, error, message):
    with pytest.raises(error, match=message):
        slurm(**options)


@pytest.mark.parametrize("options", [
    dict(time="1:00\n#SBATCH --uid=0"), dict(partition="debug\r"), dict(account="a\x1bb"),
    dict(setup=["module load x", "echo a\necho b"]), dict(setup="echo\x00"), dict(mail_user="x\x7f"),
])
def test_values_with_control_characters_are_refused(options):
    with pytest.raises(ValueError, match="newline or control character, which would inject lines into the job script"):
        slurm(**options)


def test_the_renderer_refuses_control_characters_too():
    """Options that reach the script without the decorator (e.g. an edited record) are checked again."""
    for options in ({"time": "1\n#SBATCH --x"}, {"setup": ["a\nb"]}):
        with pytest.raises(ValueError, match="newline or control character"):
            render_script(inputs(options))


def test_every_accepted_name_renders_and_the_tables_do_not_overlap():
    assert not SBATCH_OPTIONS & set(BACKEND_OPTIONS)
    assert not (SBATCH_OPTIONS | set(SHORT_OPTIONS)) & (set(OURS) | set(OURS_SHORT))
    assert set(SHORT_OPTIONS.values()) <= SBATCH_OPTIONS
    for name in sorted(SBATCH_OPTIONS | set(SHORT_OPTIONS)):
        check_slurm_options({name: "1"})
        flag = f"-{name} 1" if len(name) == 1 else f"--{name.replace('_', '-')}=1"
        assert f"#SBATCH {flag}\n" in render_script(inputs({name: "1"}))


@pytest.mark.parametrize("sbatch_on_path", [False, True], ids=["laptop", "cluster"])
def test_option_names_are_checked_whatever_the_queuing_system(tmp_path, monkeypatch, sbatch_on_path):
    """A typo fails on a laptop as on the cluster; valid SLURM options are accepted (and the
    local backend ignores them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    if sbatch_on_path:
        fake_command(bin_dir, "sbatch", "exit 1\n")
    for queuing_system in ("auto", "local"):
        with pytest.raises(OptionError, match=r"^tme=\.\.\.: not an sbatch option parallelaverage knows; "
                                              r"did you mean time\b"):
            parallel(N_runs=2, N_tasks=1, queuing_system=queuing_system, tme="1")
        with pytest.raises(OptionError, match=r"^output=\.\.\.: parallelaverage sets --output itself"):
            parallel_average(N_runs=2, N_tasks=1, queuing_system=queuing_system, output="x")
        with pytest.raises(OptionTypeError, match=r"^mem=\{'G': 1\}: SLURM options must be"):
            parallel(N_runs=2, N_tasks=1, queuing_system=queuing_system, mem={"G": 1})
        parallel(N_runs=2, N_tasks=1, queuing_system=queuing_system, time="00:10:00", mem="1G",
                 partition="debug", exclusive=True, overcommit=False, setup=["module load x"])


@pytest.mark.parametrize("name, value", [("keep_runs", True), ("keep_runs", False), ("average_results", "all"),
                                         ("average_results", 0)])
@pytest.mark.parametrize("queuing_system", ["local", "slurm"])
def test_options_of_parallel_average_are_refused_by_parallel(name, value, queuing_system):
    with pytest.raises(OptionError, match=rf"^{name}={value!r}: @parallel keeps every output; "
                                          r"keep_runs/average_results are options of @parallel_average$"):
        parallel(N_runs=2, N_tasks=1, queuing_system=queuing_system, **{name: value})
    parallel_average(N_runs=2, N_tasks=1, queuing_system=queuing_system, **{name: value})


@pytest.mark.parametrize("value, instead", [
    ("B:USR1@300", "USR1@300"), ("b:USR1", "USR1"), ("RB:USR2@120", "R:USR2@120"), ("BR:10@90", "R:10@90"),
    ("B:", "USR1@60"),
])
@pytest.mark.parametrize("queuing_system", ["local", "slurm"])
def test_a_signal_for_the_batch_shell_only_is_refused_with_what_to_use(value, instead, queuing_system):
    """SLURM sends B: signals to the batch shell, which dies of it (seen in tests/slurm): the
    ranks are stopped before the time limit instead of checkpointing and running on."""
    with pytest.raises(OptionError, match=rf"^signal={value!r}: the B: form sends the signal to the batch "
                                          rf"shell only, not to the MPI ranks; the shell does not catch it and "
                                          rf"dies, .*; use signal={instead!r} \(the ranks save a checkpoint"):
        parallel(N_runs=2, N_tasks=1, queuing_system=queuing_system, signal=value)


@pytest.mark.parametrize("value", ["USR1@300", "R:USR1@60", "10@120", "USR2", False])
def test_signals_for_the_ranks_are_accepted(value):
    parallel(N_runs=2, N_tasks=1, queuing_system="slurm", signal=value)


@pytest.mark.parametrize("export", ["NONE", "HOME", "ALL", "ALL,OMP_NUM_THREADS=4", "NONE,FOO=1"])
def test_srun_passes_the_script_s_environment_whatever_the_job_exports(export):
    """With export=NONE (or a list without ALL) srun would give the ranks only what sbatch
    exported: no PYTHONPATH. --export=ALL gives them the script's environment."""
    script = render_script(inputs({"time": "10", "export": export}))
    assert f"#SBATCH --export={export}\n" in script
    assert "\nsrun --mpi=pmi2 --export=ALL --kill-on-bad-exit=1 " in script


def test_local_jobs_accept_setup_lists():
    parallel(N_runs=2, N_tasks=1, queuing_system="local", setup=["module load x"])
    with pytest.raises(ValueError, match="newline or control character"):
        parallel(N_runs=2, N_tasks=1, queuing_system="local", setup=["a\nb"])


# ----------------------------------------------------------------- submit and state without SLURM
def no_slurm_on_path(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def test_submit_writes_the_script_then_says_sbatch_is_missing(tmp_path, monkeypatch):
    files = JobFiles(tmp_path / ".parallelaverage" / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    no_slurm_on_path(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match=r"sbatch not found on PATH: queuing_system='slurm' needs SLURM's client commands"):
        SlurmBackend().submit(files, 1, 2, {"time": "5"})
    script = (files.launch_dir(1) / "job.sbatch").read_text()
    assert "#SBATCH --ntasks=2\n" in script and "#SBATCH --time=5\n" in script
    assert f"#SBATCH --chdir={tmp_path}\n" in script
    assert f"{shlex.join(worker_argv(sys.executable, files.dir.resolve(), 1))}\n" in script
    pythonpath = script.split("export PYTHONPATH=")[1].split("\n")[0].strip("'").split(os.pathsep)
    assert all(os.path.abspath(p) in pythonpath for p in sys.path if p and os.path.isdir(p))


def test_submit_uses_the_user_template(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "slurm.sbatch").write_text("#!/bin/bash\n{{sbatch_options}}\necho mine\n{{launch}}\n")
    files = JobFiles(tmp_path / ".parallelaverage" / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    no_slurm_on_path(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="sbatch not found"):
        SlurmBackend().submit(files, 1, 2, {})
    assert "\necho mine\nsrun --mpi=pmi2" in (files.launch_dir(1) / "job.sbatch").read_text()


def test_ended_launches_need_no_query(tmp_path, monkeypatch):
    """A launch whose script wrote exit status 0 after its result, or a cached terminal state,
    answers without squeue (which is not even on PATH). Any other exit status is only a hint:
    SLURM may be requeueing the job, so squeue is asked."""
    files = JobFiles(tmp_path / "1_f")
    for launch_no in (1, 2, 3, 4):
        files.launch_dir(launch_no).mkdir(parents=True)
    files.exit_code(1).write_text("0\n")
    files.result(1).write_bytes(b"")
    (files.launch_dir(2) / "slurm_state").write_text(json.dumps({"job_id": "22", "state": "TIMEOUT"}))
    no_slurm_on_path(tmp_path, monkeypatch)
    backend = SlurmBackend()
    launches = [(files, 1, {"job_id": "11"}), (files, 2, {"job_id": "22"})]
    assert backend.states(launches) == ["ended", "ended"]
    backend.cancel(files, 2, {"job_id": "22"})  # nothing to cancel: no scancel either
    # a cache for another job id (a re-used directory) does not count
    (files.launch_dir(3) / "slurm_state").write_text(json.dumps({"job_id": "22", "state": "TIMEOUT"}))
    with pytest.raises(RuntimeError, match="squeue not found on PATH"):
        backend.state(files, 3, {"job_id": "33"})
    files.exit_code(4).write_text("137\n")  # a node failure: SLURM may run the next life
    with pytest.raises(RuntimeError, match="squeue not found on PATH"):
        backend.state(files, 4, {"job_id": "44"})
    assert backend.describe({"backend": "slurm", "job_id": "33"}) == "SLURM job 33"


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """A stand-in for a SLURM command (beside the real tests in tests/slurm)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_transient_sbatch_failures_are_retried_with_backoff(tmp_path, monkeypatch, capsys):
    """Mirrors the real unreachable-controller test in tests/slurm: here the controller recovers."""
    count = tmp_path / "count"
    count.write_text("")
    fake_command(tmp_path / "bin", "sbatch", f"""
echo x >> {count}
if [ "$(wc -l < {count})" -le 2 ]; then
  echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1
fi
echo "4242;cluster"
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(SlurmBackend, "retry_delays_s", (0.01, 0.02, 0.04))
    files = JobFiles(tmp_path / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    info = SlurmBackend().submit(files, 1, 2, {})
    assert info == {"backend": "slurm", "job_id": "4242", "script": str(files.launch_dir(1) / "job.sbatch")}
    assert count.read_text().count("x") == 3
    assert capsys.readouterr().err.count("Socket timed out on send/recv operation); retrying in") == 2


def test_a_refused_job_is_not_retried_and_reports_sbatch_s_message(tmp_path, monkeypatch):
    count = tmp_path / "count"
    fake_command(tmp_path / "bin", "sbatch", f"""
echo x >> {count}
echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    files = JobFiles(tmp_path / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"(?s)sbatch .*job\.sbatch failed \(exit status 1\):\n"
                                           r"sbatch: error: Batch job submission failed: Invalid partition name"):
        SlurmBackend().submit(files, 1, 2, {"partition": "nosuch"})
    assert count.read_text() == "x\n"


def test_signal_false_sends_no_warning_signal():
    assert "--signal" not in render_script(inputs({"time": "10", "signal": False}))
