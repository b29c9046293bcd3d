"""The hosted address directory: inetOrgPerson entries in OpenLDAP."""
