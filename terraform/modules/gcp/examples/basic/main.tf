# One Strait site in an existing VPC network. terraform init && terraform
# apply, then read the management token from Secret Manager (see the
# module's README).

provider "google" {
  project = var.project
  region  = "us-west1"
}

variable "project" {
  type        = string
  description = "The project to deploy into."
}

variable "network" {
  type        = string
  description = "The VPC network (self link)."
}

variable "subnetwork" {
  type        = string
  description = "The subnetwork in us-west1 (self link)."
}

variable "image" {
  type        = string
  description = "An image with strait, gcloud and jq."
}

module "site" {
  source             = "../.."
  site               = "gcp-west"
  project            = var.project
  region             = "us-west1"
  zones              = ["us-west1-a", "us-west1-b", "us-west1-c"]
  network            = var.network
  subnetwork         = var.subnetwork
  image              = var.image
  site_cidrs         = ["10.20.0.0/16"]
  peer_gateway_cidrs = ["0.0.0.0/0"] # tighten to your other sites' gateway addresses
}

output "gateway_addresses" {
  value = module.site.gateway_addresses
}

output "api_address" {
  value = module.site.api_address
}
