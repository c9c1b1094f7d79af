"""The command handlers: one module per `cudabox` command, the edge of the program.

A command module is the only code that reads the argparse Namespace, opens adapters (the
container engine, a registry client, NVML, Slurm, kubectl) and prints. It turns the arguments
into typed option values at once, calls the domain with those values and the opened adapters,
and renders the result; the domain below never sees a Namespace and never opens an adapter.
cli.py names each handler as "cudabox.commands.NAME:cmd_NAME" and imports it only when that
command runs, so each command pays for what it uses (`cudabox probe` starts in about 0.1 s).
"""
