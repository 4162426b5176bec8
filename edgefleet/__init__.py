"""EdgeFleet composition root: the ``edgefleet`` command and the demo.

The packages (controller, agent, compress, firmware_bundles, simulators) each own their
subcommands in a ``cli`` module; this package only wires them together, so no package
has to import another just to be reachable from the command line.
"""

__version__ = "0.1.0"
