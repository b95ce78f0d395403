"""Simulated OCPP 1.6J chargers, QA scenarios and load mode (docs/simulator.md).

* ``config``: what a charger is (pydantic, validated at the edge);
* ``charger``: the sans-I/O charger model (firmware behaviour, offline queue,
  local list, firmware updates), time passed in, actions out;
* ``meter``, ``localauth``, ``stats``: pure helpers of the model;
* ``driver``: the asyncio adapter, one task per charger, and network faults;
* ``scenario`` / ``runner``: YAML scenarios and their execution against a
  gateway's ops API; ``load``: many chargers against any OCPP 1.6J server;
* ``cli``: ``pilegate sim run|check|list|load``.
"""
