"""Example definitions, shipped so a researcher can start from one (`gpdpr tre example`)."""
