"""Planning: from a dose (a prediction) to a deliverable plan on pyRadPlan's photon engine.

`engine` (pyRadPlan's pencil-beam influence matrix on an rtgen patient, cached), `optimise`
(fluence optimisation mimicking a dose), `fluence` (fluence maps and leaf sequencing of a plan),
`plan` (one patient, stage by stage) and `outputs` (doses, fluence maps, RTPLAN, tables).
pyRadPlan itself is imported only when an influence matrix is computed.
"""
