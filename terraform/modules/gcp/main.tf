terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

locals {
  trust_domain = "${var.site}.strait"
  labels       = merge(var.labels, { "strait-site" = var.site })
  secrets      = ["server-token", "gateway-token", "management-token", "ca-pem"]
  # Health checks come from these ranges.
  google_health_checkers = ["35.191.0.0/16", "130.211.0.0/22"]

  strait_config = templatefile("${path.module}/templates/strait.yaml.tftpl", {
    site            = var.site
    api_port        = var.api_port
    bundle_port     = var.bundle_port
    mesh_domain     = var.mesh_domain
    dns_upstreams   = var.dns_upstreams
    virtual_ip_cidr = var.virtual_ip_cidr
  })
}

# --- Identity and the bootstrap secrets ------------------------------------

resource "google_service_account" "server" {
  project      = var.project
  account_id   = "strait-${var.site}-server"
  display_name = "Strait ${var.site} servers"
}

resource "google_service_account" "gateway" {
  project      = var.project
  account_id   = "strait-${var.site}-gateway"
  display_name = "Strait ${var.site} gateways"
}

# The first server stores what the others need here, once.
resource "google_secret_manager_secret" "bootstrap" {
  for_each  = toset(local.secrets)
  project   = var.project
  secret_id = "strait-${var.site}-${each.value}"
  labels    = local.labels
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "server_read" {
  for_each  = google_secret_manager_secret.bootstrap
  project   = var.project
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.server.email}"
}

resource "google_secret_manager_secret_iam_member" "server_write" {
  for_each  = google_secret_manager_secret.bootstrap
  project   = var.project
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretVersionAdder"
  member    = "serviceAccount:${google_service_account.server.email}"
}

resource "google_secret_manager_secret_iam_member" "gateway_read" {
  project   = var.project
  secret_id = google_secret_manager_secret.bootstrap["gateway-token"].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.gateway.email}"
}

# --- Firewall: only the gateway port from other sites ----------------------

resource "google_compute_firewall" "gateway_from_peers" {
  count         = length(var.peer_gateway_cidrs) > 0 ? 1 : 0
  project       = var.project
  name          = "strait-${var.site}-gateway-peers"
  network       = var.network
  description   = "The gateway port, from other sites' gateways only"
  source_ranges = var.peer_gateway_cidrs
  target_tags   = ["strait-${var.site}-gateway"]
  allow {
    protocol = "tcp"
    ports    = [tostring(var.gateway_port)]
  }
}

resource "google_compute_firewall" "gateway_from_site" {
  project       = var.project
  name          = "strait-${var.site}-gateway-site"
  network       = var.network
  description   = "Egress to imported services (virtual IPs) from inside the site, and health checks"
  source_ranges = concat(var.site_cidrs, local.google_health_checkers)
  target_tags   = ["strait-${var.site}-gateway"]
  allow {
    protocol = "tcp"
  }
}

resource "google_compute_firewall" "server_from_site" {
  project       = var.project
  name          = "strait-${var.site}-server-site"
  network       = var.network
  description   = "API, bundle endpoint and mesh DNS from inside the site, and health checks"
  source_ranges = concat(var.site_cidrs, local.google_health_checkers)
  target_tags   = ["strait-${var.site}-server"]
  allow {
    protocol = "tcp"
    ports    = [tostring(var.api_port), tostring(var.bundle_port), "53"]
  }
  allow {
    protocol = "udp"
    ports    = ["53"]
  }
}

resource "google_compute_firewall" "server_from_gateways" {
  project     = var.project
  name        = "strait-${var.site}-server-gateways"
  network     = var.network
  description = "Peers' control traffic passed through by the gateways"
  source_tags = ["strait-${var.site}-gateway"]
  target_tags = ["strait-${var.site}-server"]
  allow {
    protocol = "tcp"
    ports    = [tostring(var.api_port), tostring(var.bundle_port)]
  }
}

# --- Servers: one auto-healing group per slot, each with its data disk -----

resource "google_compute_disk" "data" {
  count   = var.server_count
  project = var.project
  name    = "strait-${var.site}-data-${count.index}"
  zone    = var.zones[count.index % length(var.zones)]
  size    = var.data_disk_size
  type    = "pd-balanced"
  labels  = local.labels
}

resource "google_compute_address" "api" {
  project      = var.project
  name         = "strait-${var.site}-api"
  region       = var.region
  subnetwork   = var.subnetwork
  address_type = "INTERNAL"
  purpose      = "SHARED_LOADBALANCER_VIP"
}

resource "google_compute_instance_template" "server" {
  count        = var.server_count
  project      = var.project
  name_prefix  = "strait-${var.site}-s${count.index}-"
  machine_type = var.server_machine_type
  tags         = ["strait-${var.site}-server"]
  labels       = local.labels
  disk {
    source_image = var.image
    boot         = true
    auto_delete  = true
  }
  disk {
    source      = google_compute_disk.data[count.index].name
    device_name = "strait-data"
    auto_delete = false
    boot        = false
  }
  network_interface {
    subnetwork = var.subnetwork
  }
  service_account {
    email  = google_service_account.server.email
    scopes = ["cloud-platform"]
  }
  metadata = {
    startup-script = templatefile("${path.module}/templates/server-boot.sh.tftpl", {
      site          = var.site
      slot          = count.index
      project       = var.project
      api_port      = var.api_port
      join_address  = "${google_compute_address.api.address}:${var.api_port}"
      strait_config = local.strait_config
      server_count  = var.server_count
      gateway_count = var.gateway_count
    })
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_health_check" "api" {
  project = var.project
  name    = "strait-${var.site}-api"
  tcp_health_check {
    port = var.api_port
  }
}

resource "google_compute_instance_group_manager" "server" {
  count              = var.server_count
  project            = var.project
  name               = "strait-${var.site}-s${count.index}"
  zone               = var.zones[count.index % length(var.zones)]
  base_instance_name = "strait-${var.site}-s${count.index}"
  target_size        = 1
  version {
    instance_template = google_compute_instance_template.server[count.index].id
  }
  stateful_disk {
    device_name = "strait-data"
    delete_rule = "NEVER"
  }
  auto_healing_policies {
    health_check      = google_compute_health_check.api.id
    initial_delay_sec = 300
  }
  update_policy {
    type                  = "OPPORTUNISTIC"
    minimal_action        = "REPLACE"
    max_unavailable_fixed = 1
    max_surge_fixed       = 0
    replacement_method    = "RECREATE"
  }
}

# The site's internal address: API, bundle endpoint and DNS.
resource "google_compute_region_backend_service" "api_tcp" {
  project               = var.project
  name                  = "strait-${var.site}-api-tcp"
  region                = var.region
  protocol              = "TCP"
  load_balancing_scheme = "INTERNAL"
  health_checks         = [google_compute_health_check.api.id]
  dynamic "backend" {
    for_each = google_compute_instance_group_manager.server
    content {
      group = backend.value.instance_group
    }
  }
}

resource "google_compute_region_backend_service" "dns_udp" {
  project               = var.project
  name                  = "strait-${var.site}-dns-udp"
  region                = var.region
  protocol              = "UDP"
  load_balancing_scheme = "INTERNAL"
  health_checks         = [google_compute_health_check.api.id]
  dynamic "backend" {
    for_each = google_compute_instance_group_manager.server
    content {
      group = backend.value.instance_group
    }
  }
}

resource "google_compute_forwarding_rule" "api_tcp" {
  project               = var.project
  name                  = "strait-${var.site}-api-tcp"
  region                = var.region
  load_balancing_scheme = "INTERNAL"
  backend_service       = google_compute_region_backend_service.api_tcp.id
  ip_address            = google_compute_address.api.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.api_port), tostring(var.bundle_port), "53"]
  network               = var.network
  subnetwork            = var.subnetwork
}

resource "google_compute_forwarding_rule" "dns_udp" {
  project               = var.project
  name                  = "strait-${var.site}-dns-udp"
  region                = var.region
  load_balancing_scheme = "INTERNAL"
  backend_service       = google_compute_region_backend_service.dns_udp.id
  ip_address            = google_compute_address.api.address
  ip_protocol           = "UDP"
  ports                 = ["53"]
  network               = var.network
  subnetwork            = var.subnetwork
}

# --- Gateways: an auto-healing group behind an external network LB --------

resource "google_compute_address" "gateway" {
  project = var.project
  name    = "strait-${var.site}-gateway"
  region  = var.region
}

resource "google_compute_instance_template" "gateway" {
  project        = var.project
  name_prefix    = "strait-${var.site}-gw-"
  machine_type   = var.gateway_machine_type
  tags           = ["strait-${var.site}-gateway"]
  labels         = local.labels
  can_ip_forward = false
  disk {
    source_image = var.image
    boot         = true
    auto_delete  = true
  }
  network_interface {
    subnetwork = var.subnetwork
  }
  service_account {
    email  = google_service_account.gateway.email
    scopes = ["cloud-platform"]
  }
  metadata = {
    startup-script = templatefile("${path.module}/templates/gateway-boot.sh.tftpl", {
      site            = var.site
      project         = var.project
      join_address    = "${google_compute_address.api.address}:${var.api_port}"
      gateway_port    = var.gateway_port
      advertise_wan   = "${google_compute_address.gateway.address}:${var.gateway_port}"
      virtual_ip_cidr = var.virtual_ip_cidr
    })
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_health_check" "gateway" {
  project = var.project
  name    = "strait-${var.site}-gateway"
  tcp_health_check {
    port = var.gateway_port
  }
}

resource "google_compute_region_instance_group_manager" "gateway" {
  project                   = var.project
  name                      = "strait-${var.site}-gateways"
  region                    = var.region
  distribution_policy_zones = var.zones
  base_instance_name        = "strait-${var.site}-gw"
  target_size               = var.gateway_count
  version {
    instance_template = google_compute_instance_template.gateway.id
  }
  auto_healing_policies {
    health_check      = google_compute_health_check.gateway.id
    initial_delay_sec = 180
  }
}

resource "google_compute_region_backend_service" "gateway" {
  project                         = var.project
  name                            = "strait-${var.site}-gateway"
  region                          = var.region
  protocol                        = "TCP"
  load_balancing_scheme           = "EXTERNAL"
  health_checks                   = [google_compute_region_health_check.gateway.id]
  connection_draining_timeout_sec = 30
  backend {
    group = google_compute_region_instance_group_manager.gateway.instance_group
  }
}

resource "google_compute_region_health_check" "gateway" {
  project = var.project
  name    = "strait-${var.site}-gateway-lb"
  region  = var.region
  tcp_health_check {
    port = var.gateway_port
  }
}

resource "google_compute_forwarding_rule" "gateway" {
  project               = var.project
  name                  = "strait-${var.site}-gateway"
  region                = var.region
  load_balancing_scheme = "EXTERNAL"
  backend_service       = google_compute_region_backend_service.gateway.id
  ip_address            = google_compute_address.gateway.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.gateway_port)]
}

# --- DNS: the mesh domain forwarded to the servers -------------------------

resource "google_dns_managed_zone" "mesh" {
  project     = var.project
  name        = "strait-${var.site}-mesh"
  dns_name    = "${trimsuffix(var.mesh_domain, ".")}."
  description = "Strait mesh DNS of site ${var.site}, forwarded to its servers"
  visibility  = "private"
  labels      = local.labels
  private_visibility_config {
    networks {
      network_url = var.network
    }
  }
  forwarding_config {
    target_name_servers {
      ipv4_address    = google_compute_address.api.address
      forwarding_path = "private"
    }
  }
}
