"""DICOM networking shared by listener, exporter and rescan: TLS contexts (:mod:`.tls`), socket
options (:mod:`.netopts`) and peer addresses (:mod:`.peers`)."""
