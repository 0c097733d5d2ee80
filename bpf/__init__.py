"""The C sources of vipfarm's BPF programs, shipped as package data (import name vipfarm_bpf).

The agent compiles them with bcc at start (nodeagent/bpf_program.py); a wheel or a plain
`pip install .` carries them, so nothing is looked up relative to a checkout.
"""
import os

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
