"""The fleet: novakeeper on many compute nodes, driven through Ansible (ansible-runner)."""
