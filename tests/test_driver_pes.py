"""The same evaluator inside i-PI's own machinery: ``<ffdirect>`` and ``i-pi-py_driver -m custom``."""

from __future__ import annotations

from pathlib import Path

import ipi_ncforces.ipi_driver.pes
from tests.ipi_helpers import IPI_PY_DRIVER, log_text, start_command, wait_for_socket, wait_process
from tests.test_driver_ipi import check_recorded_against_model, session  # noqa: F401 (fixture)

PES_FILE = Path(ipi_ncforces.ipi_driver.pes.__file__).resolve()


def test_ffdirect_runs_the_pes_in_process_with_batches(session):  # noqa: F811
    """PIMD with 4 beads and <batch_size>4: i-PI hands the PES lists of 4 structures."""
    parameters = f"{{model: {session.model}, template: {session.box}, mode: direct}}"
    ipi = session.ipi(steps=3, nbeads=4, batch_size=4, ffdirect_pes=str(PES_FILE), ffdirect_parameters=parameters)
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-3000:]
    check_recorded_against_model(session, "direct", nbeads=4)


def test_stock_ipi_py_driver_with_the_pes(session):  # noqa: F811
    ipi = session.ipi(steps=3)
    wait_for_socket(session.name, ipi)
    params = f"model={session.model},template={session.box},mode=conservative"
    cmd = [IPI_PY_DRIVER, "-u", "-a", session.name, "-m", "custom", "-P", PES_FILE, "-o", params]
    driver = start_command(cmd, session.dir, "py_driver.log")
    session.procs.append(driver)
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-3000:]
    assert wait_process(driver, 30) == 0, log_text(driver)
    check_recorded_against_model(session, "conservative")
