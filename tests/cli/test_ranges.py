"""Values that make no sense are refused (issue 27, item 7): ``relax --fmax -1`` ran all steps,
``--steps -5`` was accepted, ``md --temperature -10`` ran "at -10 K", ``relax --fix-bottom 100``
fixed every atom and reported "converged after 0 steps". Every numeric option is range-checked by
argparse (one line naming the option and the value, status 2), and the Python API (relax, run_md,
relax_batch) raises a ValueError naming the parameter and the value."""

from __future__ import annotations

import pytest
from ase.build import fcc111, molecule
from ase.io import write

from equiformer_calc.cli import main

from ..helpers import make_model


@pytest.mark.parametrize("argv, message", [
    (["relax", "x.xyz", "--fmax", "-1"], "argument --fmax: must be > 0, got -1"),
    (["relax", "x.xyz", "--fmax", "0"], "argument --fmax: must be > 0, got 0"),
    (["relax", "x.xyz", "--fmax", "nan"], "argument --fmax: must be a finite number"),
    (["relax", "x.xyz", "--steps", "-5"], "argument --steps: must be >= 0, got -5"),
    (["relax", "x.xyz", "--fix-bottom", "-1"], "argument --fix-bottom: must be >= 0, got -1"),
    (["relax", "x.xyz", "--steps", "2.5"], "argument --steps: expected an integer, got '2.5'"),
    (["md", "x.xyz", "--temperature", "-10"], "argument --temperature: must be >= 0, got -10"),
    (["md", "x.xyz", "--timestep", "0"], "argument --timestep: must be > 0, got 0"),
    (["md", "x.xyz", "--steps", "-1"], "argument --steps: must be >= 0, got -1"),
    (["md", "x.xyz", "--friction", "-0.1"], "argument --friction: must be >= 0, got -0.1"),
    (["md", "x.xyz", "--log-interval", "0"], "argument --log-interval: must be >= 1, got 0"),
    (["md", "x.xyz", "--skin", "-1"], "argument --skin: must be >= 0, got -1"),
    (["screen", "--metals", "Cu", "--fmax", "-0.05"], "argument --fmax: must be > 0, got -0.05"),
    (["screen", "--metals", "Cu", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["screen", "--metals", "Cu", "--vacuum", "-3"], "argument --vacuum: must be > 0, got -3"),
    (["screen", "--metals", "Cu", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["predict", "x.xyz", "--out", "y.csv", "--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
    (["evaluate", "m", "d.xyz", "--batch-size", "-2"], "argument --batch-size: must be >= 1, got -2"),
    (["evaluate", "m", "d.xyz", "--torch-threads", "0"], "argument --torch-threads: must be >= 1, got 0"),
    (["adsorbml", "m", "d", "--steps", "-1"], "argument --steps: must be >= 0, got -1"),
    (["adsorbml", "m", "d", "--max-tasks", "0"], "argument --max-tasks: must be >= 1, got 0"),
    (["datagen", "--out", "d", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["datagen", "--out", "d", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["train", "c.yaml", "--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["train", "c.yaml", "--max-steps", "-3"], "argument --max-steps: must be >= 1, got -3"),
    (["train", "c.yaml", "--time-limit", "-1"], "argument --time-limit: must be > 0, got -1"),
    (["ipi", "x.xyz", "--port", "70000"], "argument --port: must be <= 65535, got 70000"),
    (["ipi", "x.xyz", "--unix", "a", "--wait", "-1"], "argument --wait: must be >= 0, got -1"),
    (["lammps", "in.lammps", "--skin", "-1"], "argument --skin: must be >= 0, got -1"),
    (["convert-reference", "a", "b", "--variant", "qm9", "--task-std", "0"], "argument --task-std: must be > 0, got 0"),
])
def test_numeric_options_out_of_range_are_one_line_errors(capsys, workdir, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"equiformer-calc {argv[0]}: error: {message}" in err, err
    assert list(workdir.iterdir()) == []


def test_fix_bottom_must_leave_a_layer_free(capsys, workdir, checkpoint):
    write(workdir / "slab.xyz", fcc111("Cu", (2, 2, 3), vacuum=6.0))
    status = main(["relax", "slab.xyz", "--fix-bottom", "100", "--checkpoint", checkpoint])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "equiformer-calc relax: error: fix_bottom=100 would fix every atom: the structure has 3 atomic layer(s)" in err
    status = main(["md", "slab.xyz", "--fix-bottom", "3", "--checkpoint", checkpoint])
    assert status == 2 and "fix_bottom=3 would fix every atom" in capsys.readouterr().err
    status = main(["relax", "slab.xyz", "--fix-below", "1000", "--checkpoint", checkpoint])
    assert status == 2 and "every atom is fixed" in capsys.readouterr().err
    assert {p.name for p in workdir.iterdir()} == {"slab.xyz"}
    status = main(["screen", "--metals", "Cu", "--size", "2x2x3", "--fix-bottom", "4", "--checkpoint", checkpoint])
    assert status == 2 and "--fix-bottom 4 is more than the 3 atomic layers of surface 'Cu-fcc111'" in capsys.readouterr().err
    assert main(["relax", "slab.xyz", "--fix-bottom", "2", "--steps", "1", "--checkpoint", checkpoint]) == 0


def test_python_api_refuses_the_same_values():
    from equiformer_calc import EquiformerCalculator
    from equiformer_calc.workflows import relax, relax_batch, run_md

    calc = EquiformerCalculator(model=make_model(0))
    water = molecule("H2O")
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    cases = [
        (lambda: relax(water, calculator=calc, fmax=-1), "fmax must be a finite number > 0, got -1"),
        (lambda: relax(water, calculator=calc, steps=-5), "steps must be an integer >= 0, got -5"),
        (lambda: relax(water, calculator=calc, steps=2.5), "steps must be an integer >= 0, got 2.5"),
        (lambda: relax(slab, calculator=calc, fix_bottom=100), "fix_bottom=100 would fix every atom"),
        (lambda: run_md(water, calculator=calc, temperature=-10), "temperature must be a finite number >= 0, got -10"),
        (lambda: run_md(water, calculator=calc, timestep=0.0), "timestep must be a finite number > 0, got 0.0"),
        (lambda: run_md(water, calculator=calc, friction=float("nan")), "friction must be a finite number >= 0, got nan"),
        (lambda: run_md(slab, calculator=calc, fix_bottom=3), "fix_bottom=3 would fix every atom"),
        (lambda: relax_batch([water], calculator=calc, fmax=0), "fmax must be a finite number > 0, got 0"),
        (lambda: relax_batch([water], calculator=calc, max_concurrent=0), "max_concurrent must be an integer >= 1, got 0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value)
    # a cell relaxation of fixed atoms still moves the cell: allowed
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.7, cubic=True)
    assert relax(cu, calculator=calc, fix_below=100.0, cell=True, steps=2).error is None
