"""`novakeeper doctor`: the node's configuration and the cloud's service catalog, checked
before they fail. Checks are data (model.Check); each returns findings (model.Finding) with
a status, a one-line finding and the fix, never carried out by doctor itself."""
