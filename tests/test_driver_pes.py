"""The same evaluator inside i-PI's own machinery: ``<ffdirect>`` and ``i-pi-py_driver -m custom``."""

from __future__ import annotations

from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH


def test_ffdirect_runs_the_pes_in_process_with_batches(session):
    """PIMD with 4 beads and <batch_size>4: i-PI hands the PES lists of 4 structures."""
    ipi = session.ipi(steps=3, beads=4, batch_size=4, sockets="ffdirect")
    assert ipi.wait(90) == 0, ipi.log_text()[-3000:]
    session.check_recorded_against_model("direct", nbeads=4)


def test_stock_ipi_py_driver_with_the_pes(session):
    ipi = session.ipi(steps=3)
    session.wait_for_socket(ipi)
    params = f"model={session.model},template={session.box},mode=conservative"
    cmd = [launch.find_executable("i-pi-py_driver"), "-u", "-a", session.name, "-m", "custom", "-P", PES_PATH, "-o", params]
    driver = launch.start_process(cmd, session.dir, "py_driver.log")
    session.procs.append(driver)
    assert ipi.wait(90) == 0, ipi.log_text()[-3000:]
    assert driver.wait(30) == 0, driver.log_text()
    session.check_recorded_against_model("conservative")
