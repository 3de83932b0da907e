"""Helpers shared by the tests: certificates and key material, proxy pairs on loopback, the
fault harness, the QuickFIX engine wrapper and the Prometheus runner. Fixtures reach tests
through ``tests/conftest.py``."""
