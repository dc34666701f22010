"""`gophermart`: one executable a harness can drive with three env vars and SIGINT."""

import signal
from pathlib import Path

import aiohttp

from tests.processes import Service, free_port, service_url


async def _register_and_upload(api_url: str) -> tuple[int, int]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{api_url}/api/user/register", json={"login": "harness", "password": "pw"}
        ) as response:
            assert response.status == 200
            token = response.headers["Authorization"]
        async with http.post(
            f"{api_url}/api/user/orders", data="12345678903", headers={"Authorization": token}
        ) as response:
            uploaded = response.status
        async with http.get(
            f"{api_url}/api/user/balance", headers={"Authorization": token}
        ) as response:
            return uploaded, response.status


async def test_harness_drives_the_whole_system_through_one_executable(
    database_uri: str, log_dir: Path
) -> None:
    sim_port, api_port = free_port(), free_port()
    sim = Service(
        "accrual-sim",
        "accrual_sim",
        {"RUN_ADDRESS": f"127.0.0.1:{sim_port}"},
        log_dir,
        port=sim_port,
    ).start()
    stack = Service(
        "gophermart",
        "stack",
        {
            "RUN_ADDRESS": f"localhost:{api_port}",
            "DATABASE_URI": database_uri,
            "ACCRUAL_SYSTEM_ADDRESS": f"localhost:{sim_port}",
        },
        log_dir,
        port=api_port,
    )
    try:
        stack.start()
        assert await _register_and_upload(service_url(api_port)) == (202, 200)
        assert stack.stop(signal.SIGINT) == 0, stack.log()[-3000:]
    finally:
        if stack.running:
            stack.kill()
        sim.stop()
