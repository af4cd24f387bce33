"""Fixtures for the hardware-room tests."""

import pytest


@pytest.fixture(params=["x86_64", "arm64"])
def arch_name(request):
    return request.param
