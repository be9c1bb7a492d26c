"""lmms-eval task YAMLs of this plugin (none yet: lmms-eval's own tasks are used). lmms-eval needs the package."""
